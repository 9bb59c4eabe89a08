"""Kimi Linear (Moonshot): Kimi Delta Attention layers beside Multi-head Latent Attention layers,
with DeepSeek-V3-style mixture-of-experts feed-forwards.

Layer kinds, from `layer_types` or, in the original checkpoints' spelling, from `linear_attn_config`'s
1-indexed `kda_layers` / `full_attn_layers` (without either, transformers' default: every fourth
layer from the fifth on is full attention):
- "linear_attention": KDA (layers/kimi_delta.py); its cache an `SSMCache` (conv window + state);
- "full_attention": MLA with no positional encoding at all (layers/mla.py); its cache a
  `LatentKVCache` (per token the latent and the shared "rope" key, which nothing rotates).
Blocks are pre-norm: h = x + mixer(RMSNorm x), out = h + ffn(RMSNorm h). The feed-forward is a dense
SwiGLU where `mlp_layer_types` says "dense" (without it: the first `first_k_dense_replace` layers,
1 when absent; `moe_layer_freq` is ignored, as transformers ignores it) and a MoE elsewhere:
sigmoid scores with a correction bias that only steers the choice, top-k within the best
`topk_group` of `n_group` expert groups, weights renormalised and times `routed_scaling_factor`,
plus `n_shared_experts` shared experts every token goes through.

Config spellings: transformers 5 writes `layer_types`, `mlp_layer_types`, `linear_num_heads`,
`linear_head_dim`, `linear_conv_kernel_dim`, and stores some fields under the original names
(`num_experts`, `num_experts_per_token`, `num_shared_experts`, `moe_renormalize`,
`num_expert_group`); the original checkpoints keep the linear-attention settings in
`linear_attn_config`. Both spellings are read, with transformers' precedence.

Checkpoint names are the original ones, which transformers also writes: `block_sparse_moe` with
per-expert `w1/w2/w3`, `shared_experts`, `self_attn.q_conv1d` [C, 1, K], `self_attn.f_a_proj`.
transformers' in-memory names (`forget_gate.*`, a fused `conv1d`, fused experts) and mlx-lm's
(`switch_mlp`, `q_conv.conv`, `mlp.e_score_correction_bias`, `embed_q` / `unembed_out`) load too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import LatentKVCache, SSMCache
from mlxmodels.config import ConfigReader
from mlxmodels.errors import ConfigError
from mlxmodels.layers.kimi_delta import KimiDeltaAttention
from mlxmodels.layers.mla import MLASpec, MultiHeadLatentAttention
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.moe import (HF_EXPERT_NAMES, MIXTRAL_EXPERT_NAMES, SparseMoE, dequantize_router,
                                  split_fused_experts, stack_experts)
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.transformer import CausalLM, DecoderLayer, DecoderStack

LAYER_KINDS = {"linear_attention": "kda", "full_attention": "mla"}
MLP_KINDS = {"dense": False, "sparse": True}
# KDA's small projections: kept in float, so dequantized if a checkpoint quantized them (mlx-lm does).
KDA_FLOAT_PROJECTIONS = ("f_a_proj", "f_b_proj", "b_proj", "g_a_proj", "g_b_proj")


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    intermediate_size: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    hidden_act: str
    layer_kinds: list  # per layer: "kda" or "mla"
    sparse_layers: list  # per layer: MoE (True) or dense MLP (False)
    # Kimi Delta Attention
    linear_num_heads: int = 0
    linear_head_dim: int = 0
    linear_conv_kernel_dim: int = 4
    # Multi-head Latent Attention
    num_attention_heads: int = 0
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    attention_bias: bool = False
    # Mixture of experts
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    n_shared_experts: int = 0
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    quantization: dict | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        layers = c.require("num_hidden_layers")
        linear = _linear_attn_config(config, c.source)
        kinds = _layer_kinds(config, layers, linear, c.source)
        sparse = _sparse_layers(c, layers)
        args = cls(
            model_type=config.get("model_type", "kimi_linear"),
            hidden_size=c.require("hidden_size"),
            num_hidden_layers=layers,
            vocab_size=c.require("vocab_size"),
            intermediate_size=c.require("intermediate_size"),
            rms_norm_eps=c.get("rms_norm_eps", 1e-5, float),
            tie_word_embeddings=c.get("tie_word_embeddings", False, bool),
            hidden_act=c.get("hidden_act", "silu", str),
            layer_kinds=kinds,
            sparse_layers=sparse,
            quantization=config.get("quantization") or config.get("quantization_config"),
        )
        if "kda" in kinds:
            args.linear_num_heads = _linear_field(linear, "num_heads", c, "linear_num_heads")
            args.linear_head_dim = _linear_field(linear, "head_dim", c, "linear_head_dim")
            args.linear_conv_kernel_dim = _linear_field(
                linear, "short_conv_kernel_size", c, "linear_conv_kernel_dim", 4)
        if "mla" in kinds:
            _read_mla(args, c)
        if any(sparse):
            _read_moe(args, c)
        return args


def _spelling(config: dict, names: tuple) -> str:
    """Which of a field's alternative names the config uses (the first name if none)."""
    return next((n for n in names if config.get(n) is not None), names[0])


def _linear_attn_config(config: dict, source: str) -> ConfigReader:
    """The original checkpoints' `linear_attn_config`, its keys prefixed so errors name them fully."""
    linear = config.get("linear_attn_config") or {}
    if not isinstance(linear, dict):
        raise ConfigError(f"{source}: field 'linear_attn_config' must be an object, got {linear!r}")
    return ConfigReader({**{f"linear_attn_config.{k}": v for k, v in linear.items()}, "_source": source})


def _linear_field(linear: ConfigReader, key: str, c: ConfigReader, top_level: str, default: int | None = None) -> int:
    """A KDA size: `linear_attn_config[key]` wins over the top-level field, as in transformers."""
    if linear.config.get(f"linear_attn_config.{key}") is not None:
        return linear.require(f"linear_attn_config.{key}")
    value = c.require(top_level) if default is None else c.get(top_level, default, int)
    if value <= 0:
        raise ConfigError(f"{c.source}: field '{top_level}' must be positive, got {value}")
    return value


def _layer_kinds(config: dict, layers: int, linear: ConfigReader, source: str) -> list:
    types = config.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            count = len(types) if isinstance(types, list) else types
            raise ConfigError(f"{source}: 'layer_types' lists {count} layers, num_hidden_layers is {layers}")
        for t in types:
            if t not in LAYER_KINDS:
                raise ConfigError(
                    f"{source}: field 'layer_types' has unknown layer kind {t!r} "
                    f"(expected one of {', '.join(LAYER_KINDS)})"
                )
        return [LAYER_KINDS[t] for t in types]
    lists = {key: linear.config.get(f"linear_attn_config.{key}") for key in ("full_attn_layers", "kda_layers")}
    if all(v is not None for v in lists.values()):
        kinds = [None] * layers
        # transformers' order: the KDA list is applied last, so it wins where both name a layer.
        for key, kind in (("full_attn_layers", "mla"), ("kda_layers", "kda")):
            numbers = lists[key]
            if not isinstance(numbers, list):
                raise ConfigError(f"{source}: field 'linear_attn_config.{key}' must be a list, got {numbers!r}")
            for n in numbers:
                if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= layers:
                    raise ConfigError(
                        f"{source}: field 'linear_attn_config.{key}' names layer {n!r}, outside 1..{layers} "
                        "(the lists count layers from 1)"
                    )
                kinds[n - 1] = kind
        missing = [i + 1 for i, k in enumerate(kinds) if k is None]
        if missing:
            raise ConfigError(
                f"{source}: 'linear_attn_config' puts layer(s) {missing} in neither 'kda_layers' nor 'full_attn_layers'"
            )
        return kinds
    return ["mla" if i and i % 4 == 0 else "kda" for i in range(layers)]


def _sparse_layers(c: ConfigReader, layers: int) -> list:
    types = c.config.get("mlp_layer_types")
    if types is None:
        first = c.get("first_k_dense_replace", 1, int)
        return [i >= first for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers:
        count = len(types) if isinstance(types, list) else types
        raise ConfigError(f"{c.source}: 'mlp_layer_types' lists {count} layers, num_hidden_layers is {layers}")
    for t in types:
        if t not in MLP_KINDS:
            raise ConfigError(
                f"{c.source}: field 'mlp_layer_types' has unknown kind {t!r} (expected 'dense' or 'sparse')"
            )
    return [MLP_KINDS[t] for t in types]


def _read_mla(args: ModelArgs, c: ConfigReader) -> None:
    config = c.config
    heads = args.num_attention_heads = c.require("num_attention_heads")
    args.q_lora_rank = c.get("q_lora_rank", None, int)
    if args.q_lora_rank is not None and args.q_lora_rank <= 0:
        raise ConfigError(f"{c.source}: field 'q_lora_rank' must be positive or null, got {args.q_lora_rank}")
    args.kv_lora_rank = c.require("kv_lora_rank")
    args.qk_nope_head_dim = c.require("qk_nope_head_dim")
    args.qk_rope_head_dim = c.require("qk_rope_head_dim")
    args.v_head_dim = c.require("v_head_dim")
    args.attention_bias = c.get("attention_bias", False, bool)
    total = args.qk_nope_head_dim + args.qk_rope_head_dim
    if c.get("qk_head_dim", total, int) != total:
        raise ConfigError(
            f"{c.source}: field 'qk_head_dim' is {config['qk_head_dim']}, but qk_nope_head_dim + "
            f"qk_rope_head_dim is {total}"
        )
    kv_heads = c.get("num_key_value_heads", heads, int)
    if kv_heads != heads:
        raise ConfigError(
            f"{c.source}: field 'num_key_value_heads' is {kv_heads}, but Multi-head Latent Attention expands "
            f"keys and values for every one of the num_attention_heads ({heads})"
        )
    if c.get("mla_use_nope", True, bool) is False:
        raise ConfigError(
            f"{c.source}: field 'mla_use_nope' is false (RoPE in the MLA layers), which transformers' "
            "Kimi Linear does not implement; the released checkpoints use no positional encoding"
        )


def _read_moe(args: ModelArgs, c: ConfigReader) -> None:
    config = c.config
    experts_key = _spelling(config, ("num_experts", "num_local_experts"))
    top_k_key = _spelling(config, ("num_experts_per_token", "num_experts_per_tok"))
    group_key = _spelling(config, ("num_expert_group", "n_group"))
    experts = args.num_experts = c.require(experts_key)
    top_k = args.num_experts_per_tok = c.require(top_k_key)
    args.moe_intermediate_size = c.require("moe_intermediate_size")
    args.n_shared_experts = c.get(_spelling(config, ("num_shared_experts", "n_shared_experts")), 1, int)
    args.norm_topk_prob = c.get(_spelling(config, ("moe_renormalize", "norm_topk_prob")), True, bool)
    args.routed_scaling_factor = c.get("routed_scaling_factor", 2.446, float)  # transformers' default
    groups = args.n_group = c.get(group_key, 1, int)
    best = args.topk_group = c.get("topk_group", 1, int)
    activation = c.get("moe_router_activation_func", "sigmoid", str)
    if activation != "sigmoid":
        raise ConfigError(
            f"{c.source}: field 'moe_router_activation_func' is {activation!r}; Kimi Linear's router is 'sigmoid'"
        )
    if groups <= 0 or experts % groups:
        raise ConfigError(f"{c.source}: field '{group_key}' ({groups}) must divide '{experts_key}' ({experts})")
    if groups > 1 and experts // groups < 2:
        raise ConfigError(
            f"{c.source}: field '{group_key}' ({groups}) leaves fewer than 2 experts per group "
            f"(groups are ranked by their two best scores)"
        )
    if not 1 <= best <= groups:
        raise ConfigError(f"{c.source}: field 'topk_group' ({best}) must be between 1 and '{group_key}' ({groups})")
    if top_k > best * (experts // groups):
        raise ConfigError(
            f"{c.source}: field '{top_k_key}' ({top_k}) is more than the {best * (experts // groups)} experts "
            f"in the 'topk_group' ({best}) groups a token may use"
        )


def mla_spec(args: ModelArgs) -> MLASpec:
    return MLASpec(
        hidden_size=args.hidden_size,
        num_heads=args.num_attention_heads,
        kv_lora_rank=args.kv_lora_rank,
        qk_nope_head_dim=args.qk_nope_head_dim,
        qk_rope_head_dim=args.qk_rope_head_dim,
        v_head_dim=args.v_head_dim,
        scale=(args.qk_nope_head_dim + args.qk_rope_head_dim) ** -0.5,
        q_lora_rank=args.q_lora_rank,
        rope=None,
        bias=args.attention_bias,
    )


def mlx_lm_renames(model_type: str) -> tuple:
    """(ours, theirs) name fragments for what mlx-lm 0.32's kimi_linear reads; `sanitize` maps them back."""
    return (
        (".mlp.experts.", ".mlp.switch_mlp."),
        (".mlp.shared_expert.", ".mlp.shared_experts."),
        (".mlp.gate.e_score_correction_bias", ".mlp.e_score_correction_bias"),
        *((f".self_attn.{p}_conv1d.", f".self_attn.{p}_conv.conv.") for p in "qkv"),
    )


def mlx_lm_config(config: dict) -> dict:
    """The config plus the original checkpoints' spellings that mlx-lm 0.32 requires: the layer lists in
    `linear_attn_config`, the MoE layers as `first_k_dense_replace`, the MoE fields under their
    original names, and a `rope_theta` (required there, used by nothing)."""
    args = ModelArgs.from_config(config)
    out = dict(config)
    out["linear_attn_config"] = {
        **(config.get("linear_attn_config") or {}),
        "kda_layers": [i + 1 for i, k in enumerate(args.layer_kinds) if k == "kda"],
        "full_attn_layers": [i + 1 for i, k in enumerate(args.layer_kinds) if k == "mla"],
        "num_heads": args.linear_num_heads,
        "head_dim": args.linear_head_dim,
        "short_conv_kernel_size": args.linear_conv_kernel_dim,
    }
    out["first_k_dense_replace"] = args.sparse_layers.index(True) if any(args.sparse_layers) else args.num_hidden_layers
    out["moe_layer_freq"] = 1
    out.update(num_experts=args.num_experts, num_experts_per_token=args.num_experts_per_tok,
               num_shared_experts=args.n_shared_experts, moe_renormalize=args.norm_topk_prob,
               num_expert_group=args.n_group, topk_group=args.topk_group,
               routed_scaling_factor=args.routed_scaling_factor)
    out.setdefault("rope_theta", 10000.0)
    out.setdefault("head_dim", args.qk_rope_head_dim)
    out.setdefault("num_key_value_heads", args.num_attention_heads)
    out.setdefault("model_max_length", config.get("max_position_embeddings") or 1048576)
    return out


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        layers = []
        for kind, sparse in zip(args.layer_kinds, args.sparse_layers):
            if kind == "kda":
                mixer = KimiDeltaAttention(args.hidden_size, args.linear_num_heads, args.linear_head_dim,
                                           args.linear_conv_kernel_dim, args.rms_norm_eps, args.hidden_act)
            else:
                mixer = MultiHeadLatentAttention(mla_spec(args))
            if sparse:
                ffn = SparseMoE(
                    args.hidden_size, args.moe_intermediate_size, args.num_experts, args.num_experts_per_tok,
                    args.norm_topk_prob, args.hidden_act,
                    shared_hidden_dims=args.moe_intermediate_size * args.n_shared_experts,
                    scoring="sigmoid", correction_bias=True, n_group=args.n_group, topk_group=args.topk_group,
                    routed_scaling_factor=args.routed_scaling_factor,
                )
            else:
                ffn = GatedMLP(args.hidden_size, args.intermediate_size, args.hidden_act)
            layers.append(DecoderLayer(mixer, ffn, RMSNorm, args.hidden_size, args.rms_norm_eps, "pre"))
        self.model = DecoderStack(
            args.vocab_size, args.hidden_size, layers, RMSNorm(args.hidden_size, args.rms_norm_eps)
        )
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def make_cache(self) -> list:
        return [SSMCache() if kind == "kda" else LatentKVCache() for kind in self.args.layer_kinds]

    def sanitize(self, weights: dict) -> dict:
        weights = super().sanitize(weights)
        renames = (
            (".block_sparse_moe.", ".mlp."),  # the original checkpoints' (and transformers' saved) name
            (".mlp.shared_experts.", ".mlp.shared_expert."),
            (".self_attn.forget_gate.", ".self_attn."),  # transformers' in-memory module
            *((theirs, ours) for ours, theirs in mlx_lm_renames(self.args.model_type)),
        )
        out = {}
        for name, value in weights.items():
            for old, new in renames:
                name = name.replace(old, new)
            out[name] = value
        q = self.args.quantization
        for i, (kind, sparse) in enumerate(zip(self.args.layer_kinds, self.args.sparse_layers)):
            prefix = f"model.layers.{i}"
            if kind == "kda":
                out = self._sanitize_kda(out, f"{prefix}.self_attn", q)
            else:
                out = self._sanitize_mla(out, f"{prefix}.self_attn", q)
            if sparse:
                out = split_fused_experts(out, f"{prefix}.mlp")
                for names in (HF_EXPERT_NAMES, MIXTRAL_EXPERT_NAMES):
                    out = stack_experts(out, f"{prefix}.mlp", self.args.num_experts, names)
                out = dequantize_router(out, f"{prefix}.mlp.gate", q)
        return out

    def _sanitize_kda(self, weights: dict, prefix: str, quantization) -> dict:
        fused = weights.pop(f"{prefix}.conv1d.weight", None)  # transformers' in-memory q/k/v conv
        if fused is not None:
            for part, value in zip("qkv", mx.split(fused, 3, axis=0)):
                weights[f"{prefix}.{part}_conv1d.weight"] = value
        for part in "qkv":
            name = f"{prefix}.{part}_conv1d.weight"
            value = weights.get(name)
            if value is not None and value.ndim == 3 and value.shape[1] == 1 and value.shape[2] != 1:
                weights[name] = value.swapaxes(1, 2)  # PyTorch's [C, 1, K] -> MLX's [C, K, 1]
        if f"{prefix}.dt_bias" in weights:
            weights[f"{prefix}.dt_bias"] = weights[f"{prefix}.dt_bias"].reshape(-1)
        for projection in KDA_FLOAT_PROJECTIONS:
            weights = dequantize_router(weights, f"{prefix}.{projection}", quantization)
        return weights

    def _sanitize_mla(self, weights: dict, prefix: str, quantization) -> dict:
        """mlx-lm splits kv_b_proj into `embed_q` [H, kv_lora_rank, nope] (transposed) and
        `unembed_out` [H, v, kv_lora_rank]; joined back (in float: re-quantizing would add error)."""
        if f"{prefix}.embed_q.weight" not in weights:
            return weights
        for part in ("embed_q", "unembed_out"):
            weights = dequantize_router(weights, f"{prefix}.{part}", quantization)
        w_k = weights.pop(f"{prefix}.embed_q.weight").swapaxes(-1, -2)
        w_v = weights.pop(f"{prefix}.unembed_out.weight")
        weights[f"{prefix}.kv_b_proj.weight"] = mx.concatenate([w_k, w_v], axis=1).reshape(-1, w_v.shape[-1])
        return weights


__all__ = ["Model", "ModelArgs", "mlx_lm_config", "mlx_lm_renames"]
