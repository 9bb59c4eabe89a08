"""Phi-3, Phi-3.5 and Phi-4-mini: a Llama block with fused projections and LongRoPE.

Differences from Llama: `qkv_proj` computes q, k and v in one matrix and `gate_up_proj` the MLP's
gate and up halves (kept fused here, as in the checkpoint and in mlx-lm); RoPE may rotate only the
first `partial_rotary_factor` of each head (Phi-4-mini: 0.75); long-context checkpoints use LongRoPE
(`rope_type` "longrope", written "su" or "yarn" by older configs), whose `short_factor` list applies
while the sequence seen so far fits in `original_max_position_embeddings` and `long_factor` past it,
with cos and sin scaled by an attention factor; an optional sliding window covers every layer
(Phi-3-mini-4k: 2047; the long-context releases' 262144 exceeds their context and is dropped).
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

# The names transformers' Phi3Config gives LongRoPE; it accepts only these and "default".
LONGROPE_NAMES = ("longrope", "su", "yarn")


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rotary_dims: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    hidden_act: str = "silu"
    sliding_window: int | None = None
    rope: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        hidden = c.require("hidden_size")
        heads = c.require("num_attention_heads")
        kv_heads = c.get("num_key_value_heads", heads, int)
        if kv_heads <= 0 or heads % kv_heads:
            raise ConfigError(
                f"{c.source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        if hidden % heads and "head_dim" not in config:
            raise ConfigError(f"{c.source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        head_dim = c.get("head_dim", hidden // heads, int)
        max_positions = c.get("max_position_embeddings", 4096, int)
        rope, rotary_dims = longrope_parameters(config, c, head_dim)
        window = c.get("sliding_window", None, int)
        if window is not None and window <= 0:
            raise ConfigError(f"{c.source}: field 'sliding_window' must be positive, got {window}")
        if window is not None and window >= max_positions:
            # Phi-3-128k, Phi-3.5-mini and Phi-4-mini say 262144 for a 131072 context: a window that
            # never binds within the trained context. Plain KV caches then (which --kv-bits quantizes).
            window = None
        return cls(
            model_type=config.get("model_type", "phi3"),
            hidden_size=hidden,
            num_hidden_layers=c.require("num_hidden_layers"),
            intermediate_size=c.require("intermediate_size"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rotary_dims=rotary_dims,
            vocab_size=c.require("vocab_size"),
            rms_norm_eps=c.get("rms_norm_eps", 1e-5, float),
            max_position_embeddings=max_positions,
            tie_word_embeddings=c.get("tie_word_embeddings", False, bool),
            hidden_act=c.get("hidden_act", "silu", str),
            sliding_window=window,
            rope=rope,
        )


def longrope_parameters(config: dict, c: ConfigReader, head_dim: int) -> tuple[dict, int]:
    """(RoPE settings, rotated features per head) as transformers' Phi3Config reads them, from either dialect.

    - `partial_rotary_factor`: in `rope_parameters` (5.x) or at the top level (4.x), default 1.0;
    - "su" and "yarn" are older names of "longrope"; any other scaling is refused, as the reference does;
    - LongRoPE's original length is the top-level `original_max_position_embeddings` (default 4096),
      which takes precedence over a value inside the RoPE settings;
    - each factor list has one number per rotated pair of features.
    """
    rope = rope_parameters(config)
    rope.pop("type", None)  # the 4.x spelling of rope_type, which rope_parameters has read
    source = "rope_parameters" if isinstance(config.get("rope_parameters"), dict) else "rope_scaling"
    partial = rope.pop("partial_rotary_factor", None)
    if partial is None:
        partial = c.get("partial_rotary_factor", 1.0, float)
    valid = isinstance(partial, (int, float)) and not isinstance(partial, bool) and 0 < partial <= 1
    rotary_dims = int(head_dim * partial) if valid else 0
    if rotary_dims == 0 or rotary_dims % 2:
        raise ConfigError(f"{c.source}: field 'partial_rotary_factor' must be in (0, 1] and leave an even number "
                          f"of rotated features per head (head_dim {head_dim}), got {partial!r}")
    kind = rope["rope_type"]
    if kind in LONGROPE_NAMES:
        rope["rope_type"] = "longrope"
        original = c.get("original_max_position_embeddings", 4096, int)
        if original <= 1:
            raise ConfigError(f"{c.source}: field 'original_max_position_embeddings' must be above 1, got {original}")
        rope["original_max_position_embeddings"] = original
        for key in ("short_factor", "long_factor"):
            value = rope.get(key)
            if not (isinstance(value, list) and len(value) == rotary_dims // 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)):
                got = f"a list of {len(value)}" if isinstance(value, list) else repr(value)
                raise ConfigError(f"{c.source}: field '{source}.{key}' must be a list of {rotary_dims // 2} "
                                  f"positive numbers (one per rotated pair of features), got {got}")
        for key in ("factor", "attention_factor"):
            value = rope.get(key)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"{c.source}: field '{source}.{key}' must be a positive number, got {value!r}")
    elif kind != "default":
        raise ConfigError(f"{c.source}: field '{source}' has rope type '{kind}'; Phi-3 takes 'longrope' or none")
    return rope, rotary_dims


def mlx_lm_config(config: dict) -> dict:
    """config.json as mlx-lm 0.32's phi3 reads it (export.mlx_lm_config then moves the RoPE settings
    to `rope_scaling`): `partial_rotary_factor` at the top level, and the "type" key it requires."""
    params = config.get("rope_parameters")
    if not isinstance(params, dict):
        return config
    params = dict(params)
    config = dict(config, rope_parameters=params)
    if "partial_rotary_factor" in params:
        config["partial_rotary_factor"] = params.pop("partial_rotary_factor")
    params.setdefault("type", params.get("rope_type", "default"))
    return config


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        self._layer_windows = [args.sliding_window] * args.num_hidden_layers
        rope = RoPE(args.rotary_dims, args.rope, args.max_position_embeddings)
        layers = []
        for _ in range(args.num_hidden_layers):
            spec = AttentionSpec(
                hidden_size=args.hidden_size,
                num_heads=args.num_attention_heads,
                num_kv_heads=args.num_key_value_heads,
                head_dim=args.head_dim,
                rope=rope,
                scale=1.0 / math.sqrt(args.head_dim),
                sliding_window=args.sliding_window,
                fused_qkv=True,
            )
            mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.hidden_act, fused=True)
            layers.append(DecoderLayer(Attention(spec), mlp, RMSNorm, args.hidden_size, args.rms_norm_eps, "pre"))
        self.model = DecoderStack(
            args.vocab_size, args.hidden_size, layers, RMSNorm(args.hidden_size, args.rms_norm_eps)
        )
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
