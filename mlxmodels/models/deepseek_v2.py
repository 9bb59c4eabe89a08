"""DeepSeek-V2 (V2, V2-Lite, V2.5, Coder-V2), and the DeepSeek decoder that V3 and GLM-4.5 build on.

One block: RMSNorm -> Multi-head Latent Attention -> residual -> RMSNorm -> feed-forward -> residual.
- Attention: MLA (layers/mla.py). Per token a latent (`kv_lora_rank`) and one rope key
  (`qk_rope_head_dim`) shared by all heads are cached (`LatentKVCache`); prefill expands them through
  `kv_b_proj`, decode absorbs that expansion into the query (`--kv-bits`: the cached rows quantized,
  `QuantizedLatentKVCache`, read packed by decode). RoPE rotates only the rope part of q and
  k, in interleaved pairs (the reference multiplies (x0, x1), (x2, x3), ... as complex numbers), with
  any HF scaling; YaRN's `mscale_all_dim` also multiplies the softmax scale by mscale^2, as the
  reference's `yarn_apply_mscale` does (whatever the rope type, once it is not "default").
- Feed-forward: a dense SwiGLU (`intermediate_size`, with `mlp_bias`) on the first
  `first_k_dense_replace` layers and, after them, on layers not a multiple of `moe_layer_freq`
  (DeepSeek's own rule; transformers ignores `moe_layer_freq`, which every release sets to 1); a MoE
  elsewhere: softmax router, top-k ("greedy") or top-k within the `topk_group` groups of `n_group`
  holding the best single probabilities ("group_limited_greedy"), weights as they are (transformers
  ignores `norm_topk_prob`; every V2 release sets it false) times `routed_scaling_factor`, plus
  `n_shared_experts` shared experts every token goes through (one SwiGLU of n x moe_intermediate_size).

Checkpoint names are DeepSeek's: `self_attn.{q_proj | q_a_proj, q_a_layernorm, q_b_proj}`,
`kv_a_proj_with_mqa`, `kv_a_layernorm`, `kv_b_proj`, `o_proj`; `mlp.gate.weight`,
`mlp.experts.{e}.{gate,up,down}_proj`, `mlp.shared_experts.*`. transformers' fused experts and
mlx-lm's `switch_mlp` load too, as do mlx-lm's split `embed_q` / `unembed_out` (deepseek_v3).
The model's `mtp` holds multi-token-prediction blocks (DeepSeek-V3, GLM-4.5; layers/mtp.py); V2 has none.

Precision: `kv_a_proj_with_mqa` and `kv_b_proj` stay in float through conversion and loading (an
mlx-lm checkpoint's quantized ones are dequantized). Their errors reach every cached key and value:
on random DeepSeek-shaped models (hidden 512, 4 layers), 4-bit kv_a / kv_b moved the logits (KL)
1.3-1.5x as much per weight as q_a / q_b / o_proj, and keeping them in float removed 12-16% of the
4-bit model's KL (16-40% at 8 bits), while they are ~0.6% of DeepSeek-V2-Lite's weights; and a float
kv_b_proj spares the absorbed decode a dequantization of it per step.
The routers stay in float too (layers/moe.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.nn as nn

from mlxmodels.cache import LatentKVCache
from mlxmodels.config import ConfigReader, rope_parameters
from mlxmodels.errors import ConfigError
from mlxmodels.layers.mla import MLASpec, MultiHeadLatentAttention, join_split_kv_b
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.moe import HF_EXPERT_NAMES, SparseMoE, dequantize_router, split_fused_experts, stack_experts
from mlxmodels.layers.mtp import MTPBlock
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE
from mlxmodels.layers.transformer import CausalLM, DecoderLayer, DecoderStack

TOPK_METHODS = ("greedy", "group_limited_greedy")
LATENT_PROJECTIONS = ("kv_a_proj_with_mqa", "kv_b_proj")
# transformers' defaults where DeepSeek-V2's configuration differs from V3's.
DEFAULTS = dict(first_k_dense_replace=0, n_shared_experts=2, routed_scaling_factor=1.0, max_position_embeddings=2048,
                rms_norm_eps=1e-6)


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
    max_position_embeddings: int
    mlp_bias: bool = False  # dense MLPs and shared experts (DeepSeek-V2's `mlp_bias`)
    # Multi-head Latent Attention
    num_attention_heads: int = 0
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    attention_bias: bool = False
    rope: dict = field(default_factory=dict)
    rope_traditional: bool = True  # rotate interleaved pairs (DeepSeek) rather than halves
    attention_scale: float = 1.0
    # Mixture of experts
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    n_shared_experts: int = 0
    routed_scaling_factor: float = 1.0
    scoring: str = "softmax"  # "softmax" (V2) or "sigmoid" with a correction bias (V3, GLM-4.5)
    norm_topk_prob: bool = False
    n_group: int = 1
    topk_group: int = 1
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    num_nextn_predict_layers: int = 0  # multi-token-prediction blocks after the decoder layers
    quantization: dict | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        return cls(**common_fields(c, DEFAULTS), **mla_fields(c, traditional=True), **softmax_routing(c),
                   mlp_bias=c.get("mlp_bias", False, bool))

    def sparse(self, index: int) -> bool:
        """Whether layer `index` (an MTP block: num_hidden_layers + k) has a MoE feed-forward."""
        return index >= self.first_k_dense_replace and index % self.moe_layer_freq == 0


def spelling(config: dict, names: tuple) -> str:
    """Which of a field's alternative names the config uses (the first name if none)."""
    return next((n for n in names if config.get(n) is not None), names[0])


def common_fields(c: ConfigReader, defaults: dict) -> dict:
    """Sizes, norms and the MoE layout every DeepSeek-style family shares (`defaults`: the family's
    transformers defaults for first_k_dense_replace, n_shared_experts, routed_scaling_factor,
    max_position_embeddings and rms_norm_eps)."""
    config = c.config
    experts_key = spelling(config, ("n_routed_experts", "num_local_experts", "num_experts"))
    first_dense = c.get("first_k_dense_replace", defaults["first_k_dense_replace"], int)
    frequency = c.get("moe_layer_freq", 1, int)
    if first_dense < 0:
        raise ConfigError(f"{c.source}: field 'first_k_dense_replace' must be 0 or more, got {first_dense}")
    if frequency <= 0:
        raise ConfigError(f"{c.source}: field 'moe_layer_freq' must be positive, got {frequency}")
    shared = c.get("n_shared_experts", defaults["n_shared_experts"], int)
    if shared < 0:
        raise ConfigError(f"{c.source}: field 'n_shared_experts' must be 0 or more, got {shared}")
    experts = c.require(experts_key)
    top_k = c.require("num_experts_per_tok")
    if top_k > experts:
        raise ConfigError(f"{c.source}: field 'num_experts_per_tok' ({top_k}) is more than the {experts} "
                          f"experts ('{experts_key}')")
    return dict(
        model_type=config.get("model_type", "deepseek_v2"),
        hidden_size=c.require("hidden_size"),
        num_hidden_layers=c.require("num_hidden_layers"),
        vocab_size=c.require("vocab_size"),
        intermediate_size=c.require("intermediate_size"),
        rms_norm_eps=c.get("rms_norm_eps", defaults["rms_norm_eps"], float),
        tie_word_embeddings=c.get("tie_word_embeddings", False, bool),
        hidden_act=c.get("hidden_act", "silu", str),
        max_position_embeddings=c.get("max_position_embeddings", defaults["max_position_embeddings"], int),
        num_experts=experts,
        num_experts_per_tok=top_k,
        moe_intermediate_size=c.require("moe_intermediate_size"),
        n_shared_experts=shared,
        routed_scaling_factor=c.get("routed_scaling_factor", defaults["routed_scaling_factor"], float),
        first_k_dense_replace=first_dense,
        moe_layer_freq=frequency,
        quantization=config.get("quantization") or config.get("quantization_config"),
    )


def mla_fields(c: ConfigReader, traditional: bool) -> dict:
    """Multi-head Latent Attention's sizes, RoPE and softmax scale, with the dimensions cross-checked."""
    config = c.config
    heads = c.require("num_attention_heads")
    if "q_lora_rank" not in config:
        raise ConfigError(f"{c.source}: missing required field 'q_lora_rank' (null for a plain q_proj)")
    q_lora_rank = c.get("q_lora_rank", None, int)
    if q_lora_rank is not None and q_lora_rank <= 0:
        raise ConfigError(f"{c.source}: field 'q_lora_rank' must be positive or null, got {q_lora_rank}")
    nope, rope_dims = c.require("qk_nope_head_dim"), c.require("qk_rope_head_dim")
    if rope_dims % 2:
        raise ConfigError(f"{c.source}: field 'qk_rope_head_dim' must be even (RoPE rotates pairs), got {rope_dims}")
    if c.get("qk_head_dim", nope + rope_dims, int) != nope + rope_dims:
        raise ConfigError(f"{c.source}: field 'qk_head_dim' is {config['qk_head_dim']}, but qk_nope_head_dim + "
                          f"qk_rope_head_dim is {nope + rope_dims}")
    kv_heads = c.get("num_key_value_heads", heads, int)
    if kv_heads != heads:
        raise ConfigError(f"{c.source}: field 'num_key_value_heads' is {kv_heads}, but Multi-head Latent Attention "
                          f"expands keys and values for every one of the num_attention_heads ({heads})")
    rope = rope_parameters(config)
    return dict(
        num_attention_heads=heads,
        q_lora_rank=q_lora_rank,
        kv_lora_rank=c.require("kv_lora_rank"),
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope_dims,
        v_head_dim=c.require("v_head_dim"),
        attention_bias=c.get("attention_bias", False, bool),
        rope=rope,
        rope_traditional=traditional,
        attention_scale=(nope + rope_dims) ** -0.5 * yarn_softmax_correction(rope),
    )


def yarn_softmax_correction(rope: dict) -> float:
    """DeepSeek's `yarn_apply_mscale`: with scaled RoPE and `mscale_all_dim`, the softmax scale is
    multiplied by (0.1 mscale_all_dim ln(factor) + 1)^2 (1 when factor <= 1)."""
    all_dim = rope.get("mscale_all_dim")
    factor = rope.get("factor") or 1.0
    if rope.get("rope_type", "default") == "default" or not all_dim or factor <= 1:
        return 1.0
    return (0.1 * all_dim * math.log(factor) + 1.0) ** 2


def check_groups(c: ConfigReader, experts: int, top_k: int, top2: bool) -> tuple[int, int]:
    """(n_group, topk_group), each error naming its field. `top2`: groups rank by their two best
    scores (DeepSeek-V3), so each needs two experts."""
    groups, best = c.get("n_group", 1, int), c.get("topk_group", 1, int)
    if groups <= 0 or experts % groups:
        raise ConfigError(f"{c.source}: field 'n_group' ({groups}) must divide the number of experts ({experts})")
    if top2 and groups > 1 and experts // groups < 2:
        raise ConfigError(f"{c.source}: field 'n_group' ({groups}) leaves fewer than 2 experts per group "
                          "(groups are ranked by their two best scores)")
    if not 1 <= best <= groups:
        raise ConfigError(f"{c.source}: field 'topk_group' ({best}) must be between 1 and 'n_group' ({groups})")
    if top_k > best * (experts // groups):
        raise ConfigError(f"{c.source}: field 'num_experts_per_tok' ({top_k}) is more than the "
                          f"{best * (experts // groups)} experts in the 'topk_group' ({best}) groups a token may use")
    return groups, best


def softmax_routing(c: ConfigReader) -> dict:
    """DeepSeek-V2's router: softmax, "greedy" or "group_limited_greedy" top-k."""
    method = c.get("topk_method", "greedy", str)
    if method not in TOPK_METHODS:
        raise ConfigError(f"{c.source}: field 'topk_method' is {method!r}; DeepSeek-V2 routes with "
                          f"{' or '.join(map(repr, TOPK_METHODS))}")
    if method == "greedy":  # the reference ignores the groups then
        return dict(scoring="softmax", norm_topk_prob=False, n_group=1, topk_group=1)
    experts = c.config.get(spelling(c.config, ("n_routed_experts", "num_local_experts", "num_experts")))
    groups, best = check_groups(c, experts, c.config["num_experts_per_tok"], top2=False)
    return dict(scoring="softmax", norm_topk_prob=False, n_group=groups, topk_group=best)


def mla_spec(args: ModelArgs, rope: RoPE) -> MLASpec:
    return MLASpec(
        hidden_size=args.hidden_size,
        num_heads=args.num_attention_heads,
        kv_lora_rank=args.kv_lora_rank,
        qk_nope_head_dim=args.qk_nope_head_dim,
        qk_rope_head_dim=args.qk_rope_head_dim,
        v_head_dim=args.v_head_dim,
        scale=args.attention_scale,
        q_lora_rank=args.q_lora_rank,
        rope=rope,
        bias=args.attention_bias,
        float_latent_projections=True,
    )


def mlx_lm_renames(model_type: str) -> tuple:
    """(ours, theirs) name fragments for what mlx-lm 0.32 reads; `sanitize` maps them back."""
    return ((".mlp.experts.", ".mlp.switch_mlp."), (".mlp.shared_expert.", ".mlp.shared_experts."))


def mlx_lm_prefixes(config: dict) -> tuple:
    """(ours, theirs) name starts: the MTP blocks go back where the checkpoints keep them, after the
    decoder layers (where mlx-lm's loaders drop them)."""
    layers = config["num_hidden_layers"]
    count = config.get("num_nextn_predict_layers") or config.get("num_mtp_layers") or 0
    return tuple((f"mtp.{k}.", f"model.layers.{layers + k}.") for k in range(count))


def mlx_lm_config(config: dict) -> dict:
    """mlx-lm 0.32's deepseek_v2 builds its YaRN rotary embedding from `rope_scaling` unconditionally:
    plain RoPE is given to it as scaling by a factor of 1, which is plain RoPE there (and here)."""
    config = dict(config)
    rope = rope_parameters(config)
    if rope["rope_type"] == "default":
        config.pop("rope_parameters", None)
        config.update(rope_theta=rope["rope_theta"], rope_scaling={"factor": 1.0})
    return config


class Model(CausalLM):
    """The DeepSeek decoder: `attention()` and `attention_cache()` say which attention the family
    uses (MLA here; GLM-4.5 overrides them with GQA); the feed-forward of layer i is a MoE when
    `args.sparse(i)`."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        self.rope = self.make_rope()
        layers = [
            DecoderLayer(self.attention(), self.feed_forward(i), RMSNorm, args.hidden_size, args.rms_norm_eps, "pre")
            for i in range(args.num_hidden_layers)
        ]
        self.model = DecoderStack(args.vocab_size, args.hidden_size, layers,
                                  RMSNorm(args.hidden_size, args.rms_norm_eps))
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.mtp = [
            MTPBlock(self.attention(), self.feed_forward(args.num_hidden_layers + k), args.hidden_size,
                     args.rms_norm_eps, embed=lambda ids: self.model.embed_tokens(ids), head=self.output,
                     make_cache=self.attention_cache)
            for k in range(args.num_nextn_predict_layers)
        ]

    def make_rope(self) -> RoPE:
        a = self.args
        return RoPE(a.qk_rope_head_dim, a.rope, a.max_position_embeddings, traditional=a.rope_traditional)

    def attention(self) -> nn.Module:
        return MultiHeadLatentAttention(mla_spec(self.args, self.rope))

    def attention_cache(self):
        return LatentKVCache()

    def feed_forward(self, index: int) -> nn.Module:
        a = self.args
        if not a.sparse(index):
            return GatedMLP(a.hidden_size, a.intermediate_size, a.hidden_act, a.mlp_bias)
        return SparseMoE(
            a.hidden_size, a.moe_intermediate_size, a.num_experts, a.num_experts_per_tok, a.norm_topk_prob,
            a.hidden_act, shared_hidden_dims=a.moe_intermediate_size * a.n_shared_experts,
            scoring=a.scoring, correction_bias=a.scoring == "sigmoid", n_group=a.n_group, topk_group=a.topk_group,
            routed_scaling_factor=a.routed_scaling_factor, mlp_bias=a.mlp_bias,
        )

    def output(self, h):
        """The output projection (the LM head, or the tied embedding), shared with the MTP blocks."""
        return self.model.embed_tokens.as_linear(h) if self.tie_embeddings else self.lm_head(h)

    def make_cache(self) -> list:
        return [self.attention_cache() for _ in self.layers]

    def sanitize(self, weights: dict) -> dict:
        weights = self.take_mtp_blocks(super().sanitize(weights))
        renames = ((".mlp.shared_experts.", ".mlp.shared_expert."), (".mlp.switch_mlp.", ".mlp.experts."))
        out = {}
        for name, value in weights.items():
            for old, new in renames:
                name = name.replace(old, new)
            out[name] = value
        blocks = [(f"model.layers.{i}", layer) for i, layer in enumerate(self.layers)]
        blocks += [(f"mtp.{k}", block) for k, block in enumerate(self.mtp)]
        for prefix, block in blocks:
            if isinstance(block.mlp, SparseMoE):
                out = split_fused_experts(out, f"{prefix}.mlp")
                out = stack_experts(out, f"{prefix}.mlp", self.args.num_experts, HF_EXPERT_NAMES)
                out = dequantize_router(out, f"{prefix}.mlp.gate", self.args.quantization)
            out = join_split_kv_b(out, f"{prefix}.self_attn", self.args.quantization)
            for projection in LATENT_PROJECTIONS:  # kept in float: dequantized if a checkpoint quantized them
                out = dequantize_router(out, f"{prefix}.self_attn.{projection}", self.args.quantization)
        return out

    def take_mtp_blocks(self, weights: dict) -> dict:
        """`model.layers.{num_hidden_layers + k}.*` -> `mtp.{k}.*`, without the block's copies of the
        embedding and output head (the main model's are used). A checkpoint without any MTP tensors
        (transformers and mlx-lm drop them) loads with no MTP blocks."""
        first = self.args.num_hidden_layers
        starts = {f"model.layers.{first + k}.": f"mtp.{k}." for k in range(len(self.mtp))}
        out, found = {}, False
        for name, value in weights.items():
            start = next((s for s in starts if name.startswith(s)), None)
            if start is None:
                out[name] = value
                continue
            found = True
            rest = name[len(start):]
            if not rest.startswith(("embed_tokens.", "shared_head.head.")):
                out[starts[start] + rest] = value
        if not found and not any(name.startswith("mtp.") for name in weights):
            self.mtp = []
        return out


__all__ = ["Model", "ModelArgs", "mlx_lm_config", "mlx_lm_prefixes", "mlx_lm_renames"]
