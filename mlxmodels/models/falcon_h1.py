"""Falcon-H1: every layer runs attention and a Mamba-2 mixer side by side on the same normed input.

One block: RMSNorm -> (attention || Mamba-2 mixer), both added to the residual -> RMSNorm -> gated MLP
-> residual. There is one layer kind ("hybrid"), so each layer's cache is an `AttentionSSMCache`: a
KV cache that grows with the context and a fixed-size SSM state, side by side.

The model is trained with muP and keeps its multipliers at inference, each applied where transformers
applies it (none can be folded into a weight when that weight has a bias):
- `embedding_multiplier` on the embeddings, `lm_head_multiplier` on the logits;
- `attention_in_multiplier` on the attention's input, `key_multiplier` on its keys (here: on the
  attention scale, the same product since RoPE is linear), `attention_out_multiplier` on its output;
- `ssm_in_multiplier` on the mixer's input, `ssm_multipliers` on the five segments of its `in_proj`
  output (gate, x, B, C, dt), `ssm_out_multiplier` on its output;
- `mlp_multipliers`: on the gate projection (inside the activation) and on the MLP's output.

The mixer's inner size is `mamba_d_ssm` (or `mamba_expand` x hidden), which need not equal hidden x 2;
its output norm is optional (`mamba_rms_norm`; without it the output is just gated by SiLU(z)) and may
normalise before gating (`mamba_norm_before_gate`). Attention's `head_dim` need not be hidden / heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import AttentionSSMCache
from mlxmodels.config import ConfigReader, rope_parameters
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE
from mlxmodels.layers.ssm import Mamba2Mixer, depthwise_conv_weight
from mlxmodels.models.mamba2 import _time_step_limit as time_step_limit


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    projectors_bias: bool = False  # the mixer's out_proj
    rope: dict = field(default_factory=dict)
    # The Mamba-2 mixer
    mamba_d_ssm: int = 0  # inner size = mamba_n_heads x mamba_d_head
    mamba_n_heads: int = 0
    mamba_d_head: int = 0
    mamba_n_groups: int = 1
    mamba_d_state: int = 0
    mamba_d_conv: int = 4
    mamba_chunk_size: int = 256
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False  # the mixer's in_proj
    mamba_rms_norm: bool = False
    mamba_norm_before_gate: bool = True
    time_step_limit: tuple = (0.0, math.inf)
    # muP multipliers
    embedding_multiplier: float = 1.0
    lm_head_multiplier: float = 1.0
    attention_in_multiplier: float = 1.0
    attention_out_multiplier: float = 1.0
    key_multiplier: float = 1.0
    ssm_in_multiplier: float = 1.0
    ssm_out_multiplier: float = 1.0
    ssm_multipliers: tuple = (1.0,) * 5
    mlp_multipliers: tuple = (1.0, 1.0)

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
        # The mixer's inner size: mamba_d_ssm, or mamba_expand x hidden when it is null.
        d_ssm = c.get("mamba_d_ssm", None, int)
        inner = d_ssm if d_ssm is not None else c.get("mamba_expand", 2, int) * hidden
        ssm_heads = c.require("mamba_n_heads")
        d_head = config.get("mamba_d_head", "auto")
        if d_head == "auto":
            d_head = inner // ssm_heads
        if isinstance(d_head, bool) or not isinstance(d_head, int) or ssm_heads * d_head != inner:
            raise ConfigError(
                f"{c.source}: field 'mamba_d_head' ({d_head!r}) x mamba_n_heads ({ssm_heads}) must equal the "
                f"mixer's inner size {inner} ('mamba_d_ssm' or mamba_expand x hidden_size)"
            )
        groups = c.get("mamba_n_groups", 1, int)
        if groups <= 0 or ssm_heads % groups:
            raise ConfigError(f"{c.source}: field 'mamba_n_groups' ({groups}) must divide mamba_n_heads ({ssm_heads})")
        return cls(
            model_type=config.get("model_type", "falcon_h1"),
            hidden_size=hidden,
            num_hidden_layers=c.require("num_hidden_layers"),
            vocab_size=c.require("vocab_size"),
            intermediate_size=c.require("intermediate_size"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=c.get("head_dim", hidden // heads, int),
            rms_norm_eps=c.get("rms_norm_eps", 1e-5, float),
            max_position_embeddings=c.get("max_position_embeddings", 8192, int),
            tie_word_embeddings=c.get("tie_word_embeddings", False, bool),
            hidden_act=c.get("hidden_act", "silu", str),
            attention_bias=c.get("attention_bias", False, bool),
            mlp_bias=c.get("mlp_bias", False, bool),
            projectors_bias=c.get("projectors_bias", False, bool),
            rope=rope_parameters(config),
            mamba_d_ssm=inner,
            mamba_n_heads=ssm_heads,
            mamba_d_head=d_head,
            mamba_n_groups=groups,
            mamba_d_state=c.require("mamba_d_state"),
            mamba_d_conv=c.get("mamba_d_conv", 4, int),
            mamba_chunk_size=c.get("mamba_chunk_size", 256, int),
            mamba_conv_bias=c.get("mamba_conv_bias", True, bool),
            mamba_proj_bias=c.get("mamba_proj_bias", False, bool),
            mamba_rms_norm=c.get("mamba_rms_norm", False, bool),
            mamba_norm_before_gate=c.get("mamba_norm_before_gate", True, bool),
            time_step_limit=time_step_limit(config.get("time_step_limit"), c.source),
            embedding_multiplier=c.get("embedding_multiplier", 1.0, float),
            lm_head_multiplier=c.get("lm_head_multiplier", 1.0, float),
            attention_in_multiplier=c.get("attention_in_multiplier", 1.0, float),
            attention_out_multiplier=c.get("attention_out_multiplier", 1.0, float),
            key_multiplier=c.get("key_multiplier", 1.0, float),
            ssm_in_multiplier=c.get("ssm_in_multiplier", 1.0, float),
            ssm_out_multiplier=c.get("ssm_out_multiplier", 1.0, float),
            ssm_multipliers=_numbers(c, "ssm_multipliers", 5),
            mlp_multipliers=_numbers(c, "mlp_multipliers", 2),
        )


def _numbers(c: ConfigReader, key: str, count: int) -> tuple:
    value = c.get(key, [1.0] * count, list)
    if len(value) != count or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{c.source}: field '{key}' must be a list of {count} numbers, got {value!r}")
    return tuple(float(v) for v in value)


class ScaledGatedMLP(GatedMLP):
    """down(act(gate(x) * gate_multiplier) * up(x)) * down_multiplier."""

    def __init__(self, dims: int, hidden_dims: int, act: str, bias: bool, multipliers: tuple):
        super().__init__(dims, hidden_dims, act, bias)
        self.gate_multiplier, self.down_multiplier = multipliers

    def __call__(self, x: mx.array) -> mx.array:
        gated = self.gated(self.gate_proj(x) * self.gate_multiplier, self.up_proj(x))
        return self.down_proj(gated) * self.down_multiplier


class ParallelHybridLayer(nn.Module):
    """Attention and the Mamba-2 mixer read the same normed input; both outputs join the residual."""

    def __init__(self, args: ModelArgs, rope: RoPE):
        super().__init__()
        a = args
        gate_norm = None  # no output norm: y * SiLU(z)
        if a.mamba_rms_norm:
            gate_norm = "norm_then_gate" if a.mamba_norm_before_gate else "gate_then_norm"
        self.mamba = Mamba2Mixer(
            a.hidden_size, a.mamba_n_heads, a.mamba_d_head, a.mamba_d_state, a.mamba_n_groups, a.mamba_d_conv,
            a.mamba_chunk_size, a.rms_norm_eps, a.mamba_proj_bias, a.mamba_conv_bias, a.time_step_limit,
            gate_norm=gate_norm,
            projection_multipliers=a.ssm_multipliers, out_bias=a.projectors_bias,
        )
        self.self_attn = Attention(AttentionSpec(
            hidden_size=a.hidden_size, num_heads=a.num_attention_heads, num_kv_heads=a.num_key_value_heads,
            head_dim=a.head_dim, rope=rope, scale=a.key_multiplier / math.sqrt(a.head_dim),
            qkv_bias=a.attention_bias, out_bias=a.attention_bias,
        ))
        self.feed_forward = ScaledGatedMLP(a.hidden_size, a.intermediate_size, a.hidden_act, a.mlp_bias,
                                           a.mlp_multipliers)
        self.input_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.pre_ff_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.ssm_in, self.ssm_out = a.ssm_in_multiplier, a.ssm_out_multiplier
        self.attention_in, self.attention_out = a.attention_in_multiplier, a.attention_out_multiplier

    def __call__(self, x: mx.array, cache: AttentionSSMCache | None = None) -> mx.array:
        attention_cache, ssm_cache = (cache.attention, cache.ssm) if cache is not None else (None, None)
        h = self.input_layernorm(x)
        ssm = self.mamba(h * self.ssm_in, ssm_cache) * self.ssm_out
        attention = self.self_attn(h * self.attention_in, attention_cache) * self.attention_out
        x = x + ssm + attention
        return x + self.feed_forward(self.pre_ff_layernorm(x))


class FalconH1Stack(nn.Module):
    """Embedding, layers and final norm: Hugging Face's `model.*` prefix."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        rope = RoPE(args.head_dim, args.rope, args.max_position_embeddings)
        self.layers = [ParallelHybridLayer(args, rope) for _ in range(args.num_hidden_layers)]
        self.final_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.embedding_multiplier = args.embedding_multiplier

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        h = self.embed_tokens(inputs) * self.embedding_multiplier
        cache = cache if cache is not None else [None] * len(self.layers)
        for layer, layer_cache in zip(self.layers, cache):
            h = layer(h, layer_cache)
        return self.final_layernorm(h)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        self.model = FalconH1Stack(args)
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        h = self.model(inputs, cache)
        logits = self.model.embed_tokens.as_linear(h) if self.tie_embeddings else self.lm_head(h)
        return logits * self.args.lm_head_multiplier

    @property
    def layers(self):
        return self.model.layers

    def make_cache(self) -> list:
        return [AttentionSSMCache() for _ in self.layers]

    def sanitize(self, weights: dict) -> dict:
        out = {}
        for name, value in weights.items():
            if "rotary_emb.inv_freq" in name:
                continue
            out[name] = depthwise_conv_weight(value) if name.endswith("conv1d.weight") else value
        if self.tie_embeddings:
            for suffix in ("weight", "scales", "biases"):
                out.pop(f"lm_head.{suffix}", None)
        return out


__all__ = ["Model", "ModelArgs"]
