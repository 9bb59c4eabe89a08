"""Llama 2/3 and the families that differ from it only by switches (Mistral, Qwen2, Qwen3, SmolLM2).

One block: RMSNorm → attention (GQA, RoPE) → residual → RMSNorm → SwiGLU MLP → residual. The
switches are projection biases (Qwen2), per-head q/k norms (Qwen3) and sliding windows (Mistral,
Qwen2/3 with `use_sliding_window`). SmolLM2 checkpoints are plain `llama`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.nn as nn

from mlxmodels.config import ConfigReader, rope_parameters
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE
from mlxmodels.layers.transformer import CausalLM, DecoderLayer, DecoderStack


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    hidden_act: str = "silu"
    attention_bias: bool = False  # q/k/v projections
    out_bias: bool = False  # o_proj
    mlp_bias: bool = False
    qk_norm: bool = False
    rope: dict = field(default_factory=dict)
    layer_windows: list = field(default_factory=list)

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        hidden = c.require("hidden_size")
        heads = c.require("num_attention_heads")
        kv_heads = c.get("num_key_value_heads", heads, int)
        layers = c.require("num_hidden_layers")
        if hidden % heads and "head_dim" not in config:
            raise ConfigError(f"{c.source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        if heads % kv_heads:
            raise ConfigError(
                f"{c.source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        bias = c.get("attention_bias", False, bool)
        return cls(
            model_type=config.get("model_type", "llama"),
            hidden_size=hidden,
            num_hidden_layers=layers,
            intermediate_size=c.require("intermediate_size"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=c.get("head_dim", hidden // heads, int),
            vocab_size=c.require("vocab_size"),
            rms_norm_eps=c.get("rms_norm_eps", 1e-6, float),
            max_position_embeddings=c.get("max_position_embeddings", 4096, int),
            tie_word_embeddings=c.get("tie_word_embeddings", False, bool),
            hidden_act=c.get("hidden_act", "silu", str),
            attention_bias=bias,
            out_bias=bias,
            mlp_bias=c.get("mlp_bias", False, bool),
            rope=rope_parameters(config),
            layer_windows=sliding_windows(config, layers),
        )


def sliding_windows(config: dict, num_layers: int) -> list:
    """Each layer's sliding window (None for full attention), from whichever keys the config uses."""
    window = config.get("sliding_window")
    layer_types = config.get("layer_types")
    if layer_types:
        if len(layer_types) != num_layers:
            raise ConfigError(
                f"{config.get('_source', 'config.json')}: 'layer_types' lists {len(layer_types)} layers, "
                f"num_hidden_layers is {num_layers}"
            )
        return [window if t == "sliding_attention" else None for t in layer_types]
    if "use_sliding_window" in config:  # Qwen2/Qwen3: windows only from max_window_layers on
        if not config["use_sliding_window"] or not window:
            return [None] * num_layers
        first = config.get("max_window_layers", 0)
        return [window if i >= first else None for i in range(num_layers)]
    return [window] * num_layers if window else [None] * num_layers


def attention_spec(args: ModelArgs, rope: RoPE, window: int | None) -> AttentionSpec:
    """One layer's attention settings for a Llama-style config (shared with the MoE families)."""
    return AttentionSpec(
        hidden_size=args.hidden_size,
        num_heads=args.num_attention_heads,
        num_kv_heads=args.num_key_value_heads,
        head_dim=args.head_dim,
        rope=rope,
        scale=1.0 / math.sqrt(args.head_dim),
        qkv_bias=args.attention_bias,
        out_bias=args.out_bias,
        qk_norm="rms" if args.qk_norm else None,
        norm_eps=args.rms_norm_eps,
        sliding_window=window,
    )


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        self._layer_windows = args.layer_windows
        rope = RoPE(args.head_dim, args.rope, args.max_position_embeddings)
        layers = []
        for window in args.layer_windows:
            spec = attention_spec(args, rope, window)
            mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.hidden_act, args.mlp_bias)
            layers.append(
                DecoderLayer(Attention(spec), mlp, RMSNorm, args.hidden_size, args.rms_norm_eps, "pre")
            )
        self.model = DecoderStack(
            args.vocab_size, args.hidden_size, layers, RMSNorm(args.hidden_size, args.rms_norm_eps)
        )
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
