"""IBM Granite 4.0 hybrid (granitemoehybrid): Mamba-2 layers and attention layers, each followed by a MoE.

`layer_types` names each layer's mixer: "mamba" (5.x: "linear_attention") is a Mamba-2 mixer (grouped
B/C, gated RMSNorm, chunked scan; layers/ssm.py) whose cache is an `SSMCache` of fixed size;
"attention" (5.x: "full_attention") is GQA attention with a `KVCache`. Attention has RoPE only when
`position_embedding_type` is "rope" (the released Granite 4.0-H models say "nope") and is scaled by
`attention_multiplier` instead of 1/sqrt(head_dim).

Each block: RMSNorm -> mixer -> residual, RMSNorm -> (sparse MoE + shared MLP) -> residual, both
branches scaled by `residual_multiplier`. The router takes a softmax over the top-k logits, which is
`SparseMoE`'s softmax over all experts renormalised over the chosen k. With `num_local_experts` 0
the shared MLP is the only MLP. The embeddings are scaled by `embedding_multiplier`, the logits
divided by `logits_scaling`.

Checkpoint names: Hugging Face files keep the experts fused (`block_sparse_moe.input_linear` [E, 2I, D],
gate rows first; `output_linear` [E, D, I]; router `block_sparse_moe.router.layer`), transformers 5
holds them as `experts.gate_up_proj` / `experts.down_proj` / `router.weight`; here they are stacked
`SwitchGLU` projections under `block_sparse_moe.experts` and the router is `block_sparse_moe.gate`,
stored for mlx-lm as `switch_mlp` and `router.layer`. A dense model's shared MLP is a plain gated MLP
named `mlp` (`gate_proj`, `up_proj`, `down_proj`), as mlx-lm names it, split from HF's fused
`shared_mlp.input_linear`; with experts, the shared MLP keeps HF's fused layout (mlx-lm's too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import KVCache, SSMCache
from mlxmodels.config import ConfigReader, rope_parameters
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.mlp import GatedMLP, gated_activation
from mlxmodels.layers.moe import SparseMoE, dequantize_router, split_fused_experts
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE
from mlxmodels.layers.ssm import Mamba2Mixer, depthwise_conv_weight
from mlxmodels.layers.transformer import CausalLM, DecoderStack
from mlxmodels.models.mamba2 import _time_step_limit as time_step_limit

# Both config dialects' names for the two layer kinds.
LAYER_KINDS = {"mamba": "mamba", "linear_attention": "mamba", "attention": "attention", "full_attention": "attention"}


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    layer_kinds: list = field(default_factory=list)  # "mamba" or "attention", per layer
    hidden_act: str = "silu"
    attention_bias: bool = False
    rope: dict | None = None  # None: no RoPE ("nope")
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float = 1.0
    logits_scaling: float = 1.0
    # MLPs: `num_local_experts` 0 means the shared MLP alone
    intermediate_size: int = 0  # per expert
    shared_intermediate_size: int = 0
    num_local_experts: int = 0
    num_experts_per_tok: int = 0
    # The Mamba-2 mixer
    mamba_n_heads: int = 0
    mamba_d_head: int = 0
    mamba_n_groups: int = 1
    mamba_d_state: int = 0
    mamba_d_conv: int = 4
    mamba_chunk_size: int = 256
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    time_step_limit: tuple = (0.0, math.inf)
    quantization: dict | None = None

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
        kinds = _layer_kinds(c, layers)
        position = config.get("position_embedding_type")
        if position not in (None, "nope", "rope"):
            raise ConfigError(
                f"{c.source}: field 'position_embedding_type' must be \"rope\" or \"nope\", got {position!r}"
            )
        experts = c.get("num_local_experts", 8, int)
        if experts < 0:
            raise ConfigError(f"{c.source}: field 'num_local_experts' must be 0 or more, got {experts}")
        top_k = c.require("num_experts_per_tok") if experts else 0
        if top_k > experts:
            raise ConfigError(
                f"{c.source}: field 'num_experts_per_tok' is {top_k}, more than the {experts} experts "
                "('num_local_experts')"
            )
        inner = c.get("mamba_expand", 2, int) * hidden
        ssm_heads = c.get("mamba_n_heads", 128, int)
        d_head = config.get("mamba_d_head", "auto")
        if d_head == "auto":
            d_head = inner // ssm_heads
        if isinstance(d_head, bool) or not isinstance(d_head, int) or ssm_heads * d_head != inner:
            raise ConfigError(
                f"{c.source}: field 'mamba_d_head' ({d_head!r}) x mamba_n_heads ({ssm_heads}) must equal "
                f"mamba_expand x hidden_size ({inner})"
            )
        groups = c.get("mamba_n_groups", 1, int)
        if groups <= 0 or ssm_heads % groups:
            raise ConfigError(f"{c.source}: field 'mamba_n_groups' ({groups}) must divide mamba_n_heads ({ssm_heads})")
        return cls(
            model_type=config.get("model_type", "granitemoehybrid"),
            hidden_size=hidden,
            num_hidden_layers=layers,
            vocab_size=c.require("vocab_size"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=c.get("head_dim", hidden // heads, int),
            rms_norm_eps=c.get("rms_norm_eps", 1e-6, float),
            max_position_embeddings=c.get("max_position_embeddings", 2048, int),
            tie_word_embeddings=c.get("tie_word_embeddings", False, bool),
            layer_kinds=kinds,
            hidden_act=c.get("hidden_act", "silu", str),
            attention_bias=c.get("attention_bias", False, bool),
            rope=rope_parameters(config) if position == "rope" else None,
            embedding_multiplier=c.get("embedding_multiplier", 1.0, float),
            residual_multiplier=c.get("residual_multiplier", 1.0, float),
            attention_multiplier=c.get("attention_multiplier", 1.0, float),
            logits_scaling=c.get("logits_scaling", 1.0, float),
            intermediate_size=c.require("intermediate_size") if experts else 0,
            shared_intermediate_size=c.require("shared_intermediate_size"),
            num_local_experts=experts,
            num_experts_per_tok=top_k,
            mamba_n_heads=ssm_heads,
            mamba_d_head=d_head,
            mamba_n_groups=groups,
            mamba_d_state=c.get("mamba_d_state", 256, int),
            mamba_d_conv=c.get("mamba_d_conv", 4, int),
            mamba_chunk_size=c.get("mamba_chunk_size", 256, int),
            mamba_conv_bias=c.get("mamba_conv_bias", True, bool),
            mamba_proj_bias=c.get("mamba_proj_bias", False, bool),
            time_step_limit=time_step_limit(config.get("time_step_limit"), c.source),
            quantization=config.get("quantization") or config.get("quantization_config"),
        )


def _layer_kinds(c: ConfigReader, layers: int) -> list:
    """Each layer's kind from `layer_types` (absent: every layer Mamba-2, as transformers defaults)."""
    types = c.get("layer_types", ["mamba"] * layers, list)
    if len(types) != layers:
        raise ConfigError(f"{c.source}: 'layer_types' lists {len(types)} layers, num_hidden_layers is {layers}")
    for i, t in enumerate(types):
        if t not in LAYER_KINDS:
            raise ConfigError(
                f"{c.source}: field 'layer_types' has {t!r} at layer {i} (expected \"mamba\" or \"attention\")"
            )
    return [LAYER_KINDS[t] for t in types]


class SharedMLP(nn.Module):
    """The MLP every token goes through beside the experts: one `input_linear` computes the gate
    (first half of its rows) and the up projection (second half); `output_linear` maps back."""

    def __init__(self, dims: int, hidden_dims: int, act: str):
        super().__init__()
        self.input_linear = nn.Linear(dims, 2 * hidden_dims, bias=False)
        self.output_linear = nn.Linear(hidden_dims, dims, bias=False)
        self.gated = gated_activation(act)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.input_linear(x), 2, axis=-1)
        return self.output_linear(self.gated(gate, up))


class HybridLayer(nn.Module):
    """RMSNorm -> Mamba-2 or attention -> residual; RMSNorm -> MoE + shared MLP (or the MLP) -> residual."""

    def __init__(self, args: ModelArgs, kind: str, rope: RoPE | None):
        super().__init__()
        a = args
        self.input_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        if kind == "mamba":
            self.mamba = Mamba2Mixer(
                a.hidden_size, a.mamba_n_heads, a.mamba_d_head, a.mamba_d_state, a.mamba_n_groups, a.mamba_d_conv,
                a.mamba_chunk_size, a.rms_norm_eps, a.mamba_proj_bias, a.mamba_conv_bias, a.time_step_limit,
            )
        else:
            self.self_attn = Attention(AttentionSpec(
                hidden_size=a.hidden_size, num_heads=a.num_attention_heads, num_kv_heads=a.num_key_value_heads,
                head_dim=a.head_dim, rope=rope, scale=a.attention_multiplier,
                qkv_bias=a.attention_bias, out_bias=a.attention_bias,
            ))
        if a.num_local_experts:
            self.block_sparse_moe = SparseMoE(a.hidden_size, a.intermediate_size, a.num_local_experts,
                                              a.num_experts_per_tok, norm_topk_prob=True, act=a.hidden_act)
            self.shared_mlp = SharedMLP(a.hidden_size, a.shared_intermediate_size, a.hidden_act)
        else:
            self.mlp = GatedMLP(a.hidden_size, a.shared_intermediate_size, a.hidden_act)
        self.residual_multiplier = a.residual_multiplier

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        mixer = self.mamba if "mamba" in self else self.self_attn
        h = x + mixer(self.input_layernorm(x), cache) * self.residual_multiplier
        y = self.post_attention_layernorm(h)
        out = self.mlp(y) if "mlp" in self else self.block_sparse_moe(y) + self.shared_mlp(y)
        return h + out * self.residual_multiplier


def mlx_lm_renames(model_type: str) -> tuple:
    """(ours, theirs) name fragments of the tensors mlx-lm reads under other names."""
    return ((".block_sparse_moe.experts.", ".block_sparse_moe.switch_mlp."),
            (".block_sparse_moe.gate.", ".block_sparse_moe.router.layer."))


def mlx_lm_config(config: dict) -> dict:
    """The config as mlx-lm 0.32 reads it: layer kinds only in the 4.x spelling ("mamba", "attention");
    RoPE unless `position_embedding_type` says "nope" (transformers: only when it says "rope"); a
    dense model's MLP sized by `intermediate_size` (transformers sizes it by `shared_intermediate_size`
    and ignores `intermediate_size` when there are no experts)."""
    config = dict(config)
    if config.get("layer_types"):
        config["layer_types"] = [LAYER_KINDS.get(t, t) for t in config["layer_types"]]
    if config.get("position_embedding_type") != "rope":
        config["position_embedding_type"] = "nope"
    if not config.get("num_local_experts") and "shared_intermediate_size" in config:
        config["intermediate_size"] = config["shared_intermediate_size"]
    return config


def _split_gate_up(weights: dict, fused: str, gate: str, up: str) -> None:
    """`{fused}.{suffix}` with the gate rows first (axis -2) -> `{gate}.{suffix}` and `{up}.{suffix}`.
    Rows are independent under MLX's quantization, so packed weights, scales and biases split alike."""
    for suffix in ("weight", "scales", "biases"):
        value = weights.pop(f"{fused}.{suffix}", None)
        if value is not None:
            weights[f"{gate}.{suffix}"], weights[f"{up}.{suffix}"] = mx.split(value, 2, axis=-2)


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        rope = RoPE(args.head_dim, args.rope, args.max_position_embeddings) if args.rope is not None else None
        layers = [HybridLayer(args, kind, rope) for kind in args.layer_kinds]
        final_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.model = DecoderStack(args.vocab_size, args.hidden_size, layers, final_norm,
                                  embed_scale=args.embedding_multiplier)
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        return super().__call__(inputs, cache) / self.args.logits_scaling

    def make_cache(self) -> list:
        return [SSMCache() if kind == "mamba" else KVCache() for kind in self.args.layer_kinds]

    def sanitize(self, weights: dict) -> dict:
        weights = super().sanitize(weights)
        weights = {k: depthwise_conv_weight(v) if k.endswith("conv1d.weight") else v for k, v in weights.items()}
        dense = not self.args.num_local_experts
        for i in range(self.args.num_hidden_layers):
            layer = f"model.layers.{i}"
            if dense:
                _split_gate_up(weights, f"{layer}.shared_mlp.input_linear", f"{layer}.mlp.gate_proj",
                               f"{layer}.mlp.up_proj")
                continue
            moe = f"{layer}.block_sparse_moe"
            # mlx-lm quantizes the router (8 bits); it is computed in float here.
            weights = dequantize_router(weights, f"{moe}.router.layer", self.args.quantization)
            _split_gate_up(weights, f"{moe}.input_linear", f"{moe}.experts.gate_proj", f"{moe}.experts.up_proj")
            weights = split_fused_experts(weights, moe)
        renames = DENSE_RENAMES if dense else MOE_RENAMES
        return {_renamed(k, renames): v for k, v in weights.items()}


# Checkpoint name fragments -> ours (the first that matches applies).
MOE_RENAMES = {
    ".block_sparse_moe.router.layer.": ".block_sparse_moe.gate.",  # HF files, mlx-lm
    ".block_sparse_moe.router.": ".block_sparse_moe.gate.",  # transformers 5
    ".block_sparse_moe.switch_mlp.": ".block_sparse_moe.experts.",  # mlx-lm
    ".block_sparse_moe.output_linear.": ".block_sparse_moe.experts.down_proj.",  # HF files
}
DENSE_RENAMES = {".shared_mlp.output_linear.": ".mlp.down_proj."}


def _renamed(name: str, renames: dict) -> str:
    for old, new in renames.items():
        if old in name:
            return name.replace(old, new)
    return name


__all__ = ["Model", "ModelArgs", "mlx_lm_config", "mlx_lm_renames"]
