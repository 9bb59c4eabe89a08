"""Liquid LFM2: gated short convolutions, with full attention on a few layers.

Every block is operator_norm -> mixer -> residual -> ffn_norm -> SwiGLU -> residual, the mixer
being either a gated short convolution (layers/short_conv.py) or GQA attention with per-head q/k
RMSNorm and RoPE. Which layer has which comes from `layer_types` ("conv" / "full_attention") or, in
older configs, `full_attn_idxs` (the attention layers' indices; neither: every layer attends). The
final norm is called `embedding_norm` (Hugging Face's name), and the output is tied to the
embedding unless `tie_word_embeddings` (older configs: `tie_embedding`) says otherwise.

The SwiGLU width is derived from `intermediate_size` (older configs: `block_ff_dim`) as the
reference does: with `block_auto_adjust_ff_dim`, int(2/3 x) then, if `block_ffn_dim_multiplier` is
set, times it and rounded up to `block_multiple_of` (`feed_forward_size`).

Parameter names are Hugging Face's except inside the shared attention and MLP, which `sanitize`
renames (`self_attn.out_proj` -> `o_proj`, `q_layernorm`/`k_layernorm` -> `q_norm`/`k_norm`,
`feed_forward.w1/w3/w2` -> `gate_proj/up_proj/down_proj`); the converter writes them back
(`mlx_lm_renames`), so Orchard's output is named as mlx-lm and transformers name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import KVCache, SSMCache
from mlxmodels.config import ConfigReader, rope_parameters
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE
from mlxmodels.layers.short_conv import ShortConv
from mlxmodels.layers.ssm import depthwise_conv_weight
from mlxmodels.layers.transformer import CausalLM

LAYER_KINDS = ("conv", "full_attention")


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    feed_forward_size: int
    norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    conv_bias: bool
    conv_L_cache: int
    layer_types: list = field(default_factory=list)
    rope: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        hidden = c.require("hidden_size")
        layers = c.require("num_hidden_layers")
        heads = c.require("num_attention_heads")
        kv_heads = c.get("num_key_value_heads", heads, int)
        if kv_heads <= 0 or heads % kv_heads:
            raise ConfigError(
                f"{c.source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        if hidden % heads and "head_dim" not in config:
            raise ConfigError(f"{c.source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        kernel = c.get("conv_L_cache", 3, int)
        if kernel <= 0:
            raise ConfigError(f"{c.source}: field 'conv_L_cache' must be positive, got {kernel}")
        return cls(
            model_type=config.get("model_type", "lfm2"),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=c.get("head_dim", hidden // heads, int),
            vocab_size=c.require("vocab_size"),
            feed_forward_size=feed_forward_size(c),
            norm_eps=c.get("norm_eps", 1e-5, float),
            max_position_embeddings=c.get("max_position_embeddings", 128_000, int),
            # The older key wins where both are present, as in the reference.
            tie_word_embeddings=c.get("tie_embedding", c.get("tie_word_embeddings", True, bool), bool),
            conv_bias=c.get("conv_bias", False, bool),
            conv_L_cache=kernel,
            layer_types=layer_kinds(c, layers),
            rope=rope_parameters(config, default_theta=1_000_000.0),
        )


def feed_forward_size(c: ConfigReader) -> int:
    """The SwiGLU width, computed as transformers' `Lfm2MLP` does (integer truncation included)."""
    size = c.get("block_ff_dim", None, int)
    key = "block_ff_dim" if size is not None else "intermediate_size"
    if size is None:
        size = c.require("intermediate_size")
    if c.get("block_auto_adjust_ff_dim", True, bool):
        size = int(2 * size / 3)
        # Absent means 1.0; an explicit null skips the multiplier and the rounding with it.
        explicit_null = "block_ffn_dim_multiplier" in c.config and c.config["block_ffn_dim_multiplier"] is None
        multiplier = None if explicit_null else c.get("block_ffn_dim_multiplier", 1.0, float)
        if multiplier is not None:
            multiple = c.get("block_multiple_of", 256, int)
            if multiple <= 0:
                raise ConfigError(f"{c.source}: field 'block_multiple_of' must be positive, got {multiple}")
            size = int(multiplier * size)
            size = multiple * ((size + multiple - 1) // multiple)
    if size <= 0:
        raise ConfigError(f"{c.source}: field '{key}' gives a feed-forward width of {size}")
    return size


def layer_kinds(c: ConfigReader, num_layers: int) -> list:
    """Each layer's kind ("conv" or "full_attention") from `layer_types` or `full_attn_idxs`."""
    types = c.get("layer_types", None, list)
    indices = c.get("full_attn_idxs", None, list)
    if indices is not None:
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_layers for i in indices):
            raise ConfigError(
                f"{c.source}: field 'full_attn_idxs' must list layer indices below num_hidden_layers "
                f"({num_layers}), got {indices}"
            )
        from_indices = ["full_attention" if i in indices else "conv" for i in range(num_layers)]
    if types is None:
        return from_indices if indices is not None else ["full_attention"] * num_layers
    if len(types) != num_layers:
        raise ConfigError(
            f"{c.source}: field 'layer_types' lists {len(types)} layers, num_hidden_layers is {num_layers}"
        )
    unknown = sorted({str(t) for t in types} - set(LAYER_KINDS))
    if unknown:
        raise ConfigError(
            f"{c.source}: field 'layer_types' has unsupported kind(s) {', '.join(unknown)} "
            f"(supported: {', '.join(LAYER_KINDS)})"
        )
    if indices is not None and from_indices != types:
        raise ConfigError(f"{c.source}: fields 'layer_types' and 'full_attn_idxs' name different attention layers")
    return list(types)


# (ours, Hugging Face's and mlx-lm's): the shared attention and MLP name a few tensors their own way.
_RENAMES = (
    (".self_attn.o_proj", ".self_attn.out_proj"),
    (".self_attn.q_norm", ".self_attn.q_layernorm"),
    (".self_attn.k_norm", ".self_attn.k_layernorm"),
    (".feed_forward.gate_proj", ".feed_forward.w1"),
    (".feed_forward.up_proj", ".feed_forward.w3"),
    (".feed_forward.down_proj", ".feed_forward.w2"),
)


def mlx_lm_renames(model_type: str) -> tuple:
    """Name fragments the converter writes under Hugging Face's (= mlx-lm's) names; see `sanitize`."""
    return _RENAMES


class Block(nn.Module):
    def __init__(self, args: ModelArgs, kind: str, rope: RoPE):
        super().__init__()
        self.is_attention = kind == "full_attention"
        if self.is_attention:
            self.self_attn = Attention(AttentionSpec(
                hidden_size=args.hidden_size,
                num_heads=args.num_attention_heads,
                num_kv_heads=args.num_key_value_heads,
                head_dim=args.head_dim,
                rope=rope,
                scale=args.head_dim**-0.5,
                qk_norm="rms",
                norm_eps=args.norm_eps,
            ))
        else:
            self.conv = ShortConv(args.hidden_size, args.conv_L_cache, args.conv_bias)
        self.feed_forward = GatedMLP(args.hidden_size, args.feed_forward_size, "silu")
        self.operator_norm = RMSNorm(args.hidden_size, args.norm_eps)
        self.ffn_norm = RMSNorm(args.hidden_size, args.norm_eps)

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        mixer = self.self_attn if self.is_attention else self.conv
        h = x + mixer(self.operator_norm(x), cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Lfm2Model(nn.Module):
    """Embedding, blocks and the final norm: Hugging Face's `model.*` prefix."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        rope = RoPE(args.head_dim, args.rope, args.max_position_embeddings)
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [Block(args, kind, rope) for kind in args.layer_types]
        self.embedding_norm = RMSNorm(args.hidden_size, args.norm_eps)

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        h = self.embed_tokens(inputs)
        cache = cache if cache is not None else [None] * len(self.layers)
        for layer, layer_cache in zip(self.layers, cache):
            h = layer(h, layer_cache)
        return self.embedding_norm(h)


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        self.model = Lfm2Model(args)
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def make_cache(self) -> list:
        """A growing KV cache per attention layer; the conv window (an `SSMCache`) per conv layer."""
        return [KVCache() if layer.is_attention else SSMCache() for layer in self.layers]

    def sanitize(self, weights: dict) -> dict:
        out = {}
        for name, value in super().sanitize(weights).items():
            for ours, theirs in _RENAMES:
                name = name.replace(theirs, ours)
            out[name] = depthwise_conv_weight(value) if name.endswith(".conv.conv.weight") else value
        return out


__all__ = ["Model", "ModelArgs", "mlx_lm_renames"]
