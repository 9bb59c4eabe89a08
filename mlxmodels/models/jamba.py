"""Jamba (AI21): Mamba-1 layers interleaved with attention layers, and a sparse MoE on some layers.

Every layer is RMSNorm -> mixer -> residual, then RMSNorm -> feed-forward -> residual. Two
periodic patterns pick the parts:
- the mixer of layer i is attention when i % attn_layer_period == attn_layer_offset, else Mamba-1;
- its feed-forward is a sparse MoE when i % expert_layer_period == expert_layer_offset (and there
  is more than one expert), else a dense SwiGLU MLP of the same width as each expert.

Jamba's quirks: its attention has no positional encoding at all (the Mamba layers carry position);
its Mamba mixer RMS-normalises dt, B and C right after `x_proj`; its router takes the softmax over
all experts and keeps the top-k probabilities as they are, without renormalising them to one.

Parameter names follow the checkpoints (`model.layers.N.mamba.*` / `self_attn.*`,
`feed_forward.*`, `input_layernorm`, `pre_ff_layernorm`, `model.final_layernorm`), except that the
router (`feed_forward.router`) is the shared MoE block's `gate` here; `sanitize` renames it, and
stacks the per-expert tensors. Caches: `KVCache` on attention layers, `SSMCache` on Mamba layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import KVCache, SSMCache
from mlxmodels.config import ConfigReader
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.moe import SparseMoE, dequantize_router, split_fused_experts, stack_experts
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.ssm import MambaMixer
from mlxmodels.layers.transformer import CausalLM

EXPERT_NAMES = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}


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
    tie_word_embeddings: bool
    num_experts: int
    num_experts_per_tok: int
    mamba_d_state: int
    mamba_d_conv: int
    mamba_inner: int  # mamba_expand x hidden_size
    mamba_dt_rank: int
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    attention_layers: list = field(default_factory=list)  # per layer: attention (True) or Mamba
    sparse_layers: list = field(default_factory=list)  # per layer: MoE (True) or dense MLP
    quantization: dict | None = None

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        hidden = c.require("hidden_size")
        layers = c.require("num_hidden_layers")
        heads = c.require("num_attention_heads")
        kv_heads = c.get("num_key_value_heads", heads, int)
        if heads % kv_heads:
            raise ConfigError(
                f"{c.source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        if hidden % heads and config.get("head_dim") is None:
            raise ConfigError(f"{c.source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        # One activation serves the MLPs and the Mamba convolution; the Mamba gate is always SiLU.
        act = c.get("hidden_act", "silu", str)
        if act != "silu":
            raise ConfigError(f"{c.source}: field 'hidden_act' must be 'silu' for Jamba, got {act!r}")
        key = "num_experts" if config.get("num_experts") is not None else "num_local_experts"
        experts = c.get(key, 16, int)
        if experts <= 0:
            raise ConfigError(f"{c.source}: field '{key}' must be positive, got {experts}")
        top_k = c.get("num_experts_per_tok", 2, int)
        if not 0 < top_k <= experts:
            raise ConfigError(
                f"{c.source}: field 'num_experts_per_tok' ({top_k}) must be between 1 and the {experts} "
                f"experts ('{key}')"
            )
        attention = _periodic(c, "attn_layer", 8, 4, layers)
        sparse = _periodic(c, "expert_layer", 2, 1, layers) if experts > 1 else [False] * layers
        rank = config.get("mamba_dt_rank", "auto")
        if rank == "auto":
            rank = math.ceil(hidden / 16)
        elif not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise ConfigError(f"{c.source}: field 'mamba_dt_rank' must be a positive int or \"auto\", got {rank!r}")
        return cls(
            model_type=config.get("model_type", "jamba"),
            hidden_size=hidden,
            num_hidden_layers=layers,
            intermediate_size=c.require("intermediate_size"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=c.get("head_dim", hidden // heads, int),
            vocab_size=c.require("vocab_size"),
            rms_norm_eps=c.get("rms_norm_eps", 1e-6, float),
            tie_word_embeddings=c.get("tie_word_embeddings", False, bool),
            num_experts=experts,
            num_experts_per_tok=top_k,
            mamba_d_state=c.get("mamba_d_state", 16, int),
            mamba_d_conv=c.get("mamba_d_conv", 4, int),
            mamba_inner=c.get("mamba_expand", 2, int) * hidden,
            mamba_dt_rank=rank,
            mamba_conv_bias=c.get("mamba_conv_bias", True, bool),
            mamba_proj_bias=c.get("mamba_proj_bias", False, bool),
            attention_layers=attention,
            sparse_layers=sparse,
            quantization=config.get("quantization") or config.get("quantization_config"),
        )


def _periodic(c: ConfigReader, name: str, period: int, offset: int, layers: int) -> list:
    """Which layers are `name` layers: i % {name}_period == {name}_offset."""
    period = c.get(f"{name}_period", period, int)
    offset = c.get(f"{name}_offset", offset, int)
    if period <= 0:
        raise ConfigError(f"{c.source}: field '{name}_period' must be positive, got {period}")
    if not 0 <= offset < period:
        raise ConfigError(f"{c.source}: field '{name}_offset' ({offset}) must be in [0, {name}_period = {period})")
    return [i % period == offset for i in range(layers)]


class JambaLayer(nn.Module):
    """RMSNorm -> mixer (`self_attn` or `mamba`) -> residual; RMSNorm -> `feed_forward` -> residual."""

    def __init__(self, args: ModelArgs, attention: bool, sparse: bool):
        super().__init__()
        h = args.hidden_size
        if attention:
            self.self_attn = Attention(AttentionSpec(
                hidden_size=h, num_heads=args.num_attention_heads, num_kv_heads=args.num_key_value_heads,
                head_dim=args.head_dim, rope=None, scale=1.0 / math.sqrt(args.head_dim),
            ))
        else:
            self.mamba = MambaMixer(
                h, args.mamba_inner, args.mamba_d_state, args.mamba_d_conv, args.mamba_dt_rank,
                args.mamba_proj_bias, args.mamba_conv_bias, inner_norm_eps=args.rms_norm_eps,
            )
        if sparse:
            self.feed_forward = SparseMoE(
                h, args.intermediate_size, args.num_experts, args.num_experts_per_tok, norm_topk_prob=False
            )
        else:
            self.feed_forward = GatedMLP(h, args.intermediate_size)
        self.input_layernorm = RMSNorm(h, args.rms_norm_eps)
        self.pre_ff_layernorm = RMSNorm(h, args.rms_norm_eps)

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        mixer = self.self_attn if "self_attn" in self else self.mamba
        h = x + mixer(self.input_layernorm(x), cache)
        return h + self.feed_forward(self.pre_ff_layernorm(h))


class JambaModel(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [JambaLayer(args, a, s) for a, s in zip(args.attention_layers, args.sparse_layers)]
        self.final_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        h = self.embed_tokens(inputs)
        cache = cache if cache is not None else [None] * len(self.layers)
        for layer, layer_cache in zip(self.layers, cache):
            h = layer(h, layer_cache)
        return self.final_layernorm(h)


def mlx_lm_renames(model_type: str) -> tuple:
    """(ours, theirs): mlx-lm keeps the router as `router` and stacks experts under `switch_mlp`."""
    return ((".feed_forward.experts.", ".feed_forward.switch_mlp."), (".feed_forward.gate.", ".feed_forward.router."))


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        self.model = JambaModel(args)
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def make_cache(self) -> list:
        return [KVCache() if attention else SSMCache() for attention in self.args.attention_layers]

    def sanitize(self, weights: dict) -> dict:
        weights = super().sanitize(weights)
        out = {}
        for name, value in weights.items():
            if name.endswith("conv1d.weight") and value.ndim == 3 and value.shape[1] == 1 and value.shape[2] != 1:
                value = value.swapaxes(1, 2)  # PyTorch's [C, 1, K] -> MLX's [C, K, 1]
            out[name.replace(".feed_forward.switch_mlp.", ".feed_forward.experts.")] = value
        for i, sparse in enumerate(self.args.sparse_layers):
            if not sparse:
                continue
            prefix = f"model.layers.{i}.feed_forward"
            # Dequantized under the router's own name, which per-layer quantization entries use.
            out = dequantize_router(out, f"{prefix}.router", self.args.quantization)
            for suffix in ("weight", "scales", "biases"):
                if f"{prefix}.router.{suffix}" in out:
                    out[f"{prefix}.gate.{suffix}"] = out.pop(f"{prefix}.router.{suffix}")
            out = split_fused_experts(out, prefix)
            out = stack_experts(out, prefix, self.args.num_experts, EXPERT_NAMES)
        return out
