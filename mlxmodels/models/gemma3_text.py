"""Gemma 3 (text): interleaved sliding-window and global layers with their own RoPE bases.

Differences from Llama: embeddings scaled by sqrt(hidden_size); a norm before *and* after attention
and the MLP; norms weigh by (1 + w); q/k RMSNorm per head; GeGLU (tanh GELU); attention scaled by
`query_pre_attn_scalar` instead of head_dim; local layers use `rope_local_base_freq` (4.x dialect)
or `rope_parameters.sliding_attention` (5.x); optional soft-capping of attention and final logits.
Gemma 2 (gemma2.py) is this model without the q/k norms, with its own defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.nn as nn

from mlxmodels.config import ConfigReader, rope_parameters
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.norms import OffsetRMSNorm
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
    query_pre_attn_scalar: float
    sliding_window: int
    layer_types: list
    hidden_activation: str = "gelu_pytorch_tanh"
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    rope_global: dict = field(default_factory=dict)
    rope_local: dict = field(default_factory=dict)
    qk_norm: bool = True  # Gemma 2 (gemma2.py, which reuses this module) has none

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        layers = c.require("num_hidden_layers")
        head_dim = c.get("head_dim", 256, int)
        heads = c.require("num_attention_heads")
        kv_heads = c.get("num_key_value_heads", heads, int)
        if kv_heads <= 0 or heads % kv_heads:
            raise ConfigError(
                f"{c.source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        layer_types = config.get("layer_types")
        if layer_types is None:
            # 4.x configs give a period instead: every Nth layer is global, the rest local.
            pattern = c.get("sliding_window_pattern", 6, int)
            if pattern <= 0:
                raise ConfigError(f"{c.source}: field 'sliding_window_pattern' must be positive, got {pattern}")
            layer_types = [
                "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)
            ]
        if not isinstance(layer_types, list) or not set(layer_types) <= {"full_attention", "sliding_attention"}:
            raise ConfigError(
                f"{c.source}: field 'layer_types' must list 'sliding_attention' or 'full_attention' per layer, "
                f"got {layer_types!r}"
            )
        if len(layer_types) != layers:
            raise ConfigError(
                f"{c.source}: 'layer_types' lists {len(layer_types)} layers, num_hidden_layers is {layers}"
            )
        return cls(
            model_type=config.get("model_type", "gemma3_text"),
            hidden_size=c.require("hidden_size"),
            num_hidden_layers=layers,
            intermediate_size=c.require("intermediate_size"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=c.require("vocab_size"),
            rms_norm_eps=c.get("rms_norm_eps", 1e-6, float),
            max_position_embeddings=c.get("max_position_embeddings", 131072, int),
            query_pre_attn_scalar=c.get("query_pre_attn_scalar", float(head_dim), float),
            sliding_window=c.get("sliding_window", 4096, int),
            layer_types=list(layer_types),
            hidden_activation=c.get("hidden_activation", "gelu_pytorch_tanh", str),
            tie_word_embeddings=c.get("tie_word_embeddings", True, bool),
            attention_bias=c.get("attention_bias", False, bool),
            attn_logit_softcapping=c.get("attn_logit_softcapping", None, float),
            final_logit_softcapping=c.get("final_logit_softcapping", None, float),
            rope_global=rope_parameters(config, "full_attention", default_theta=1_000_000.0),
            rope_local=rope_parameters(config, "sliding_attention", default_theta=10_000.0),
        )


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        self.final_softcap = args.final_logit_softcapping
        ropes = {
            "full_attention": RoPE(args.head_dim, args.rope_global, args.max_position_embeddings),
            "sliding_attention": RoPE(args.head_dim, args.rope_local, args.max_position_embeddings),
        }
        self._layer_windows = []
        layers = []
        for layer_type in args.layer_types:
            window = args.sliding_window if layer_type == "sliding_attention" else None
            self._layer_windows.append(window)
            spec = AttentionSpec(
                hidden_size=args.hidden_size,
                num_heads=args.num_attention_heads,
                num_kv_heads=args.num_key_value_heads,
                head_dim=args.head_dim,
                rope=ropes.get(layer_type, ropes["full_attention"]),
                scale=args.query_pre_attn_scalar**-0.5,
                qkv_bias=args.attention_bias,
                out_bias=args.attention_bias,
                qk_norm="offset_rms" if args.qk_norm else None,
                norm_eps=args.rms_norm_eps,
                sliding_window=window,
                logit_softcap=args.attn_logit_softcapping,
            )
            mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.hidden_activation)
            layers.append(
                DecoderLayer(Attention(spec), mlp, OffsetRMSNorm, args.hidden_size, args.rms_norm_eps, "sandwich")
            )
        self.model = DecoderStack(
            args.vocab_size,
            args.hidden_size,
            layers,
            OffsetRMSNorm(args.hidden_size, args.rms_norm_eps),
            embed_scale=math.sqrt(args.hidden_size),
        )
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def sanitize(self, weights: dict) -> dict:
        """Take the text tower out of a multimodal Gemma 3 checkpoint (both naming schemes)."""
        renamed = {}
        for name, value in weights.items():
            if name.startswith(("vision_tower", "multi_modal_projector", "model.vision_tower", "model.multi_modal_projector")):
                continue
            for old, new in (("model.language_model.", "model."), ("language_model.model.", "model."),
                             ("language_model.lm_head.", "lm_head.")):
                if name.startswith(old):
                    name = new + name[len(old):]
            renamed[name] = value
        return super().sanitize(renamed)
