"""Nemotron-H (NVIDIA): a hybrid stack in which every block is RMSNorm -> one mixer -> residual.

The mixer of each block comes from the config's layer list: `layers_block_type` (transformers 5:
"linear_attention", "full_attention", "mlp", "moe"; the older spellings "mamba" and "attention"
too) or, in older configs, the string `hybrid_override_pattern` with one character per layer:

    M  Mamba-2 (SSD): its output norm is a gated RMSNorm over `n_groups` channel groups
    *  attention without positional encoding (GQA, no biases)
    -  MLP: up -> relu^2 -> down (`mlp_hidden_act`)
    E  MoE: DeepSeek-V3's sigmoid router (correction bias, group-limited top-k, routed scaling)
       over non-gated relu^2 experts, optionally between latent projections (`moe_latent_size`),
       plus one shared non-gated expert that every token goes through

Quirks of the reference (transformers' `modeling_nemotron_h`): dt is clamped from below at
`time_step_min` (its `time_step_limit` is not read); the attention has no bias whatever
`attention_bias` says; the output projection is never tied to the embedding.

Parameter names follow the checkpoints (`backbone.embeddings`, `backbone.layers.N.{norm,mixer}`,
`backbone.norm_f`, `lm_head`); transformers 5 writes `model.` for `backbone.`, and mlx-lm
`switch_mlp.fc1/fc2` for the stacked experts: `sanitize` reads all of them. The shared expert is
`mixer.shared_experts` in checkpoints and the MoE block's `shared_expert` here.

Caches: `SSMCache` on Mamba blocks, `KVCache` on attention blocks, and a `StatelessCache` (a token
counter) on MLP and MoE blocks, so the cache stays one object per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import KVCache, SSMCache, StatelessCache
from mlxmodels.config import ConfigReader
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.mlp import ACTIVATIONS, MLP
from mlxmodels.layers.moe import SparseMoE, dequantize_router, stack_experts
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.ssm import Mamba2Mixer
from mlxmodels.models.mamba import Backbone

# Every spelling of a block kind -> ours.
BLOCK_KINDS = {
    "M": "mamba", "linear_attention": "mamba", "mamba": "mamba",
    "*": "attention", "full_attention": "attention", "attention": "attention",
    "-": "mlp", "mlp": "mlp",
    "E": "moe", "moe": "moe",
}
EXPERT_NAMES = {"up_proj": "up_proj", "down_proj": "down_proj"}  # checkpoint -> ours: the same
# Older configs' names of some Mamba fields (transformers still reads them).
ALIASES = {"n_groups": "mamba_n_groups", "conv_kernel": "mamba_d_conv", "use_conv_bias": "mamba_conv_bias",
           "chunk_size": "mamba_chunk_size", "time_step_min": "mamba_dt_min"}


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    vocab_size: int
    block_kinds: list  # per layer: "mamba", "attention", "mlp" or "moe"
    layer_norm_epsilon: float
    # attention
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    # MLP blocks
    intermediate_size: int = 21504
    mlp_hidden_act: str = "relu2"
    mlp_bias: bool = False
    # Mamba-2 blocks
    mamba_num_heads: int = 128
    mamba_head_dim: int = 64
    ssm_state_size: int = 128
    n_groups: int = 8
    conv_kernel: int = 4
    chunk_size: int = 128
    use_bias: bool = False  # Mamba in_proj / out_proj
    use_conv_bias: bool = True
    time_step_min: float = 0.001
    # MoE blocks
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 7688
    moe_shared_expert_intermediate_size: int = 7688
    moe_latent_size: int = 0  # 0: the experts work at hidden_size
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    quantization: dict | None = None

    @property
    def num_hidden_layers(self) -> int:
        return len(self.block_kinds)

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        config = {**{k: config[old] for k, old in ALIASES.items() if k not in config and old in config}, **config}
        c = ConfigReader(config)
        kinds = _block_kinds(config, c.source)
        a = cls(
            model_type=config.get("model_type", "nemotron_h"),
            hidden_size=c.require("hidden_size"),
            vocab_size=c.require("vocab_size"),
            block_kinds=kinds,
            layer_norm_epsilon=c.get("layer_norm_epsilon", 1e-5, float),
            quantization=config.get("quantization") or config.get("quantization_config"),
        )
        if "attention" in kinds:
            a.num_attention_heads = c.require("num_attention_heads")
            a.num_key_value_heads = c.get("num_key_value_heads", a.num_attention_heads, int)
            a.head_dim = c.get("head_dim", a.hidden_size // a.num_attention_heads, int)
            if a.num_attention_heads % a.num_key_value_heads:
                raise ConfigError(f"{c.source}: num_attention_heads {a.num_attention_heads} is not a multiple "
                                  f"of num_key_value_heads {a.num_key_value_heads}")
        if "mlp" in kinds or "moe" in kinds:
            a.mlp_hidden_act = c.get("mlp_hidden_act", "relu2", str)
            if a.mlp_hidden_act not in ACTIVATIONS:
                raise ConfigError(f"{c.source}: field 'mlp_hidden_act' is {a.mlp_hidden_act!r}, not one of "
                                  f"{', '.join(ACTIVATIONS)}")
            a.mlp_bias = c.get("mlp_bias", False, bool)
        if "mlp" in kinds:
            a.intermediate_size = c.require("intermediate_size")
        if "mamba" in kinds:
            _read_mamba(a, c)
        if "moe" in kinds:
            _read_moe(a, c)
        return a


def _block_kinds(config: dict, source: str) -> list:
    """Each layer's kind, from `layers_block_type` (or its alias `layer_types`) or `hybrid_override_pattern`."""
    key = next((k for k in ("layers_block_type", "layer_types", "hybrid_override_pattern") if config.get(k)), None)
    if key is None:
        raise ConfigError(f"{source}: missing required field 'layers_block_type' (or 'hybrid_override_pattern')")
    spelled = config[key]
    if key == "hybrid_override_pattern" and isinstance(spelled, str):
        spelled = list(spelled)
    if not isinstance(spelled, list) or any(t not in BLOCK_KINDS for t in spelled):
        raise ConfigError(
            f"{source}: field '{key}' must list block kinds (M/*/-/E, or mamba/attention/mlp/moe and "
            f"linear_attention/full_attention), got {config[key]!r}"
        )
    layers = config.get("num_hidden_layers")
    if layers is not None and layers != len(spelled):
        raise ConfigError(f"{source}: '{key}' lists {len(spelled)} layers, num_hidden_layers is {layers}")
    return [BLOCK_KINDS[t] for t in spelled]


def _read_mamba(a: ModelArgs, c: ConfigReader) -> None:
    # The convolution's activation; the gated norm's gate is always SiLU.
    act = c.get("mamba_hidden_act", "silu", str)
    if act != "silu":
        raise ConfigError(f"{c.source}: field 'mamba_hidden_act' must be 'silu', got {act!r}")
    a.mamba_num_heads = c.require("mamba_num_heads")
    a.mamba_head_dim = c.require("mamba_head_dim")
    a.ssm_state_size = c.require("ssm_state_size")
    a.n_groups = c.get("n_groups", 8, int)
    if a.n_groups <= 0 or a.mamba_num_heads % a.n_groups:
        raise ConfigError(
            f"{c.source}: field 'n_groups' ({a.n_groups}) must divide mamba_num_heads ({a.mamba_num_heads})"
        )
    a.conv_kernel = c.get("conv_kernel", 4, int)
    a.chunk_size = c.get("chunk_size", 128, int)
    if a.chunk_size <= 0:
        raise ConfigError(f"{c.source}: field 'chunk_size' must be positive, got {a.chunk_size}")
    a.use_bias = c.get("use_bias", False, bool)
    a.use_conv_bias = c.get("use_conv_bias", True, bool)
    a.time_step_min = c.get("time_step_min", 0.001, float)


def _read_moe(a: ModelArgs, c: ConfigReader) -> None:
    # `num_local_experts` is transformers' alias for it.
    key = "num_local_experts" if c.config.get("n_routed_experts") is None and "num_local_experts" in c.config \
        else "n_routed_experts"
    a.n_routed_experts = c.require(key)
    a.num_experts_per_tok = c.require("num_experts_per_tok")
    a.moe_intermediate_size = c.require("moe_intermediate_size")
    a.moe_shared_expert_intermediate_size = c.require("moe_shared_expert_intermediate_size")
    a.moe_latent_size = c.get("moe_latent_size", 0, int)
    a.n_group = c.get("n_group", 1, int)
    a.topk_group = c.get("topk_group", 1, int)
    a.norm_topk_prob = c.get("norm_topk_prob", True, bool)
    a.routed_scaling_factor = c.get("routed_scaling_factor", 1.0, float)
    if a.n_group <= 0 or a.n_routed_experts % a.n_group:
        raise ConfigError(
            f"{c.source}: field 'n_group' ({a.n_group}) must divide the {a.n_routed_experts} experts ('{key}')"
        )
    if not 0 < a.topk_group <= a.n_group:
        raise ConfigError(
            f"{c.source}: field 'topk_group' ({a.topk_group}) must be between 1 and n_group ({a.n_group})"
        )
    eligible = a.topk_group * (a.n_routed_experts // a.n_group)
    if a.num_experts_per_tok > eligible:
        raise ConfigError(f"{c.source}: field 'num_experts_per_tok' ({a.num_experts_per_tok}) is more than the "
                          f"{eligible} experts of the topk_group best groups")


class Block(nn.Module):
    """RMSNorm -> mixer -> residual. Only Mamba and attention mixers read their cache; the others
    advance their token counter."""

    def __init__(self, kind: str, mixer: nn.Module, hidden: int, eps: float):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(hidden, eps)
        self.mixer = mixer

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        h = self.norm(x)
        if self.kind in ("mamba", "attention"):
            h = self.mixer(h, cache)
        else:
            h = self.mixer(h)
            if cache is not None:
                cache.advance(x.shape[1])
        return x + h


def make_mixer(kind: str, a: ModelArgs) -> nn.Module:
    if kind == "mamba":
        return Mamba2Mixer(
            a.hidden_size, a.mamba_num_heads, a.mamba_head_dim, a.ssm_state_size, a.n_groups, a.conv_kernel,
            a.chunk_size, a.layer_norm_epsilon, a.use_bias, a.use_conv_bias, (a.time_step_min, math.inf),
        )
    if kind == "attention":
        return Attention(AttentionSpec(
            hidden_size=a.hidden_size, num_heads=a.num_attention_heads, num_kv_heads=a.num_key_value_heads,
            head_dim=a.head_dim, rope=None, scale=1.0 / math.sqrt(a.head_dim),
        ))
    if kind == "mlp":
        return MLP(a.hidden_size, a.intermediate_size, a.mlp_hidden_act, a.mlp_bias)
    return SparseMoE(
        a.hidden_size, a.moe_intermediate_size, a.n_routed_experts, a.num_experts_per_tok, a.norm_topk_prob,
        act=a.mlp_hidden_act, shared_hidden_dims=a.moe_shared_expert_intermediate_size, scoring="sigmoid",
        correction_bias=True, n_group=a.n_group, topk_group=a.topk_group,
        routed_scaling_factor=a.routed_scaling_factor, gated=False, latent_dims=a.moe_latent_size,
        mlp_bias=a.mlp_bias,
    )


def mlx_lm_renames(model_type: str) -> tuple:
    """(ours, theirs): mlx-lm stacks the experts as `switch_mlp.fc1` (up) / `fc2` (down) and keeps
    the checkpoints' `shared_experts`."""
    return ((".mixer.experts.up_proj", ".mixer.switch_mlp.fc1"), (".mixer.experts.down_proj", ".mixer.switch_mlp.fc2"),
            (".mixer.shared_expert.", ".mixer.shared_experts."))


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        layers = [Block(kind, make_mixer(kind, args), args.hidden_size, args.layer_norm_epsilon)
                  for kind in args.block_kinds]
        self.backbone = Backbone(args.vocab_size, args.hidden_size, layers, args.layer_norm_epsilon)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        return self.lm_head(self.backbone(inputs, cache))

    @property
    def layers(self):
        return self.backbone.layers

    def make_cache(self) -> list:
        kinds = {"mamba": SSMCache, "attention": KVCache, "mlp": StatelessCache, "moe": StatelessCache}
        return [kinds[kind]() for kind in self.args.block_kinds]

    def sanitize(self, weights: dict) -> dict:
        out = {}
        for name, value in weights.items():
            if name.startswith("mtp."):
                continue  # multi-token-prediction layers: for speculative training, not generation
            if name.startswith("model."):
                name = "backbone." + name[len("model."):]
            if name.endswith("conv1d.weight") and value.ndim == 3 and value.shape[1] == 1 and value.shape[2] != 1:
                value = value.swapaxes(1, 2)  # PyTorch's [C, 1, K] -> MLX's [C, K, 1]
            for ours, theirs in mlx_lm_renames(self.args.model_type):
                name = name.replace(theirs, ours)
            out[name] = value
        for i, kind in enumerate(self.args.block_kinds):
            if kind != "moe":
                continue
            prefix = f"backbone.layers.{i}.mixer"
            for proj in ("up_proj", "down_proj"):  # transformers 5's in-memory form: stacked, no `.weight`
                if f"{prefix}.experts.{proj}" in out:
                    out[f"{prefix}.experts.{proj}.weight"] = out.pop(f"{prefix}.experts.{proj}")
            out = stack_experts(out, prefix, self.args.n_routed_experts, EXPERT_NAMES)
            out = dequantize_router(out, f"{prefix}.gate", self.args.quantization)
        return out
