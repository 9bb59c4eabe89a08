"""OpenAI's gpt-oss: a Llama-style mixture-of-experts transformer with a few twists, all of them
options of the shared layers.

- Attention: biases on q, k, v and o; a learned sink logit per head that joins each softmax's
  denominator (`AttentionSpec.sinks`); layers alternate sliding-window and full attention
  (`layer_types`, sliding first); YaRN RoPE (theta 150000, factor 32, correction range not truncated).
- MoE (`layers/moe.py`): a router with a bias whose softmax over the k largest logits equals the
  softmax over all experts renormalised over the top k (`norm_topk_prob`); experts with biases; the
  clamped SwiGLU (up + 1) * g * sigmoid(alpha g) with g = min(gate, limit) and up clipped to +-limit.

Checkpoints keep each layer's experts fused. transformers' float layout is `experts.gate_up_proj`
[E, hidden, 2I] with the gate and up columns interleaved (even: gate, odd: up), `gate_up_proj_bias`
[E, 2I], `down_proj` [E, I, hidden] and `down_proj_bias` [E, hidden]. OpenAI's released checkpoints
store the two matrices in MXFP4 instead: `*_blocks` [E, out, in / 32, 16] uint8 (two E2M1 codes per
byte, the lower nibble first) and `*_scales` [E, out, in / 32] uint8 (E8M0 exponents: 2^(s - 127)).
That is byte for byte MLX's own "mxfp4" layout (eight codes per uint32, little-endian, one uint8
exponent per 32 inputs), so `sanitize` only reinterprets the blocks as uint32 and takes every other
output row for gate and up: the experts are never dequantized, and run through `mx.gather_qmm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.config import ConfigReader, rope_parameters
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.moe import SparseMoE, dequantize_router
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE
from mlxmodels.layers.transformer import CausalLM, DecoderLayer, DecoderStack

DEFAULT_THETA = 150000.0
# transformers' GptOssConfig when a config names no RoPE scaling at all.
DEFAULT_ROPE = {
    "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
    "original_max_position_embeddings": 4096,
}
LAYER_TYPES = ("sliding_attention", "full_attention")


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
    num_local_experts: int
    num_experts_per_tok: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    sliding_window: int
    layer_types: list
    swiglu_limit: float
    swiglu_alpha: float
    rope: dict
    quantization: dict | None = None

    @property
    def layer_windows(self) -> list:
        return [self.sliding_window if t == "sliding_attention" else None for t in self.layer_types]

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        layers = c.require("num_hidden_layers")
        heads = c.require("num_attention_heads")
        kv_heads = c.require("num_key_value_heads")
        if heads % kv_heads:
            raise ConfigError(
                f"{c.source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        # transformers reads `num_experts` as an alias of `num_local_experts`.
        experts_key = "num_local_experts" if config.get("num_local_experts") is not None else "num_experts"
        if config.get(experts_key) is None:
            raise ConfigError(f"{c.source}: missing required field 'num_local_experts'")
        experts = c.require(experts_key)
        top_k = c.require("num_experts_per_tok")
        window = c.get("sliding_window", 128, int)
        if window <= 0:
            raise ConfigError(f"{c.source}: field 'sliding_window' must be positive, got {window}")
        if top_k > experts:
            raise ConfigError(
                f"{c.source}: field 'num_experts_per_tok' is {top_k}, more than the {experts} experts ('{experts_key}')"
            )
        return cls(
            model_type=config.get("model_type", "gpt_oss"),
            hidden_size=c.require("hidden_size"),
            num_hidden_layers=layers,
            intermediate_size=c.require("intermediate_size"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=c.get("head_dim", 64, int),
            vocab_size=c.require("vocab_size"),
            num_local_experts=experts,
            num_experts_per_tok=top_k,
            rms_norm_eps=c.get("rms_norm_eps", 1e-5, float),
            max_position_embeddings=c.get("max_position_embeddings", 131072, int),
            tie_word_embeddings=c.get("tie_word_embeddings", False, bool),
            attention_bias=c.get("attention_bias", True, bool),
            sliding_window=window,
            layer_types=layer_types(c, layers),
            swiglu_limit=c.get("swiglu_limit", 7.0, float),
            swiglu_alpha=c.get("swiglu_alpha", 1.702, float),  # 4.x configs lack it: a constant then
            rope=rope_settings(c),
            quantization=config.get("quantization") or config.get("quantization_config"),
        )


def layer_types(c: ConfigReader, layers: int) -> list:
    """Each layer's kind; without `layer_types`, sliding and full attention alternate, sliding first."""
    types = c.get("layer_types", None, list)
    if types is None:
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if len(types) != layers:
        raise ConfigError(f"{c.source}: 'layer_types' lists {len(types)} layers, num_hidden_layers is {layers}")
    for kind in types:
        if kind not in LAYER_TYPES:
            raise ConfigError(
                f"{c.source}: 'layer_types' has '{kind}' (expected {' or '.join(repr(t) for t in LAYER_TYPES)})"
            )
    return list(types)


def rope_settings(c: ConfigReader) -> dict:
    """RoPE from either dialect (`rope_parameters`, or 4.x's `rope_theta` + `rope_scaling`); a config
    that names no scaling gets gpt-oss's YaRN defaults, as in transformers."""
    if c.config.get("rope_parameters") or c.config.get("rope_scaling"):
        return rope_parameters(c.config, default_theta=DEFAULT_THETA)
    return dict(DEFAULT_ROPE, rope_theta=c.get("rope_theta", DEFAULT_THETA, float))


def mlx_lm_renames(model_type: str) -> tuple:
    """(ours, theirs) name fragments for the checkpoints mlx-lm reads: its router keeps HF's name."""
    return ((".mlp.gate.", ".mlp.router."),)


def mxfp4_as_mlx(blocks: mx.array) -> mx.array:
    """`*_blocks` [..., out, in / 32, 16] uint8 -> MLX's mxfp4 weight [..., out, in / 8] uint32 (the same bytes)."""
    *lead, groups, width = blocks.shape
    return blocks.reshape(*lead, groups * width).view(mx.uint32)


def split_experts(weights: dict, prefix: str) -> dict:
    """The fused `{prefix}.gate_up_proj*` / `down_proj*` tensors (float or MXFP4) -> our stacked
    `{prefix}.{gate,up,down}_proj.{weight,scales,bias}` in the [experts, out, in] layout."""
    gate_up = {}
    if f"{prefix}.gate_up_proj_blocks" in weights:
        gate_up["weight"] = mxfp4_as_mlx(weights.pop(f"{prefix}.gate_up_proj_blocks"))
        gate_up["scales"] = weights.pop(f"{prefix}.gate_up_proj_scales")
    elif f"{prefix}.gate_up_proj" in weights:
        gate_up["weight"] = weights.pop(f"{prefix}.gate_up_proj").swapaxes(-1, -2)
    if f"{prefix}.gate_up_proj_bias" in weights:
        gate_up["bias"] = weights.pop(f"{prefix}.gate_up_proj_bias")
    for part, value in gate_up.items():  # axis 1 is the 2I outputs: gate and up interleaved
        weights[f"{prefix}.gate_proj.{part}"] = mx.contiguous(value[:, 0::2])
        weights[f"{prefix}.up_proj.{part}"] = mx.contiguous(value[:, 1::2])
    if f"{prefix}.down_proj_blocks" in weights:
        weights[f"{prefix}.down_proj.weight"] = mxfp4_as_mlx(weights.pop(f"{prefix}.down_proj_blocks"))
        weights[f"{prefix}.down_proj.scales"] = weights.pop(f"{prefix}.down_proj_scales")
    elif f"{prefix}.down_proj" in weights:
        weights[f"{prefix}.down_proj.weight"] = weights.pop(f"{prefix}.down_proj").swapaxes(-1, -2)
    if f"{prefix}.down_proj_bias" in weights:
        weights[f"{prefix}.down_proj.bias"] = weights.pop(f"{prefix}.down_proj_bias")
    return weights


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        self._layer_windows = args.layer_windows
        rope = RoPE(args.head_dim, args.rope, args.max_position_embeddings)
        layers = []
        for window in args.layer_windows:
            attention = Attention(AttentionSpec(
                hidden_size=args.hidden_size, num_heads=args.num_attention_heads,
                num_kv_heads=args.num_key_value_heads, head_dim=args.head_dim, rope=rope,
                scale=args.head_dim ** -0.5, qkv_bias=args.attention_bias, out_bias=args.attention_bias,
                norm_eps=args.rms_norm_eps, sliding_window=window, sinks=True,
            ))
            mlp = SparseMoE(
                args.hidden_size, args.intermediate_size, args.num_local_experts, args.num_experts_per_tok,
                norm_topk_prob=True, router_bias=True, expert_bias=True,
                swiglu_limit=args.swiglu_limit, swiglu_alpha=args.swiglu_alpha,
            )
            layers.append(DecoderLayer(attention, mlp, RMSNorm, args.hidden_size, args.rms_norm_eps, "pre"))
        self.model = DecoderStack(
            args.vocab_size, args.hidden_size, layers, RMSNorm(args.hidden_size, args.rms_norm_eps)
        )
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def sanitize(self, weights: dict) -> dict:
        """HF float or MXFP4 checkpoints, and MLX ones (Orchard's or mlx-lm's: stacked experts, router
        under HF's `router` name, possibly quantized), -> our names."""
        weights = super().sanitize(weights)
        for i in range(self.args.num_hidden_layers):
            prefix = f"model.layers.{i}.mlp"
            weights = dequantize_router(weights, f"{prefix}.router", self.args.quantization)
            for part in ("weight", "bias"):
                if f"{prefix}.router.{part}" in weights:
                    weights[f"{prefix}.gate.{part}"] = weights.pop(f"{prefix}.router.{part}")
            weights = split_experts(weights, f"{prefix}.experts")
        return weights
