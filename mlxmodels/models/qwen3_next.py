"""Qwen3-Next: Gated DeltaNet (linear attention) layers and gated full-attention layers, with sparse
MoE feed-forward blocks. Qwen3.5 (qwen3_5.py) and Qwen3.5-MoE (qwen3_5_moe.py) build on this module.

- The layer pattern is `layer_types` ("linear_attention" / "full_attention"); transformers 4.x
  configs give `full_attention_interval` instead (every n-th layer full attention, default 4).
- Linear-attention layers: Gated DeltaNet (layers/gated_deltanet.py), here with the fused
  `in_proj_qkvz` / `in_proj_ba` projections. Their cache is an `SSMCache` of fixed size.
- Full-attention layers: GQA whose q_proj also emits a per-head output gate (sigmoid, before
  o_proj), RMSNorm on each head's q and k, and RoPE over the first `partial_rotary_factor` of the
  head dim (0.25 by default; in `rope_parameters` in 5.x configs, at the top level in 4.x).
- Feed-forward: sparse MoE (softmax router, top-k, renormalised when `norm_topk_prob`, plus a shared
  expert scaled by sigmoid(shared_expert_gate)) on the layers `decoder_sparse_step` and
  `mlp_only_layers` pick, a dense SwiGLU on the others.
- Norms: the decoder norms (input, post-attention, final, q/k) are zero-centred in Hugging Face
  checkpoints (scale = 1 + w). MLX-format checkpoints (mlx-lm's and Orchard's converter's) store
  the scale 1 + w itself, so the model holds the scale in plain RMSNorms: `sanitize` adds the one to
  a Hugging Face checkpoint, recognised by its PyTorch-layout conv kernels ([C, 1, K]), which MLX
  checkpoints store as [C, K, 1]. The Gated DeltaNet output norm is an ordinary weighted RMSNorm.
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
from mlxmodels.layers.gated_deltanet import GatedDeltaNet
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.moe import HF_EXPERT_NAMES, SparseMoE, dequantize_router, split_fused_experts, stack_experts
from mlxmodels.layers.mtp import MTPBlock
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE
from mlxmodels.layers.ssm import depthwise_conv_weight
from mlxmodels.layers.transformer import CausalLM, DecoderStack
from mlxmodels.models.moe_decoder import mlx_lm_renames  # noqa: F401 (export)

LAYER_KINDS = ("linear_attention", "full_attention")
# Hugging Face's names of the multi-token-prediction layer's parts -> the layers/mtp.py block's.
MTP_NAMES = (("mtp.layers.0.", "mtp.0."), ("mtp.fc.", "mtp.0.eh_proj."), ("mtp.pre_fc_norm_embedding.", "mtp.0.enorm."),
             ("mtp.pre_fc_norm_hidden.", "mtp.0.hnorm."), ("mtp.norm.", "mtp.0.shared_head.norm."))
MTP_NORMS = (".enorm.weight", ".hnorm.weight", ".shared_head.norm.weight")  # zero-centred as well
# Norms whose Hugging Face weight w means a scale of 1 + w (see the module docstring).
ZERO_CENTRED_NORMS = (".input_layernorm.weight", ".post_attention_layernorm.weight", ".self_attn.q_norm.weight",
                      ".self_attn.k_norm.weight")


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    layer_types: list
    # gated full attention
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    attention_bias: bool
    rope: dict
    rotary_dims: int
    # Gated DeltaNet
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    fused_projections: bool
    # feed-forward: per layer MoE (True) or a dense SwiGLU of intermediate_size (False)
    sparse_layers: list
    intermediate_size: int = 0
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = True
    quantization: dict = field(default_factory=dict)
    mtp_layers: int = 0  # multi-token-prediction layers (`mtp.*`): the first is loaded, for speculation

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        fields = hybrid_fields(config, fused_projections=True)
        fields["mtp_layers"] = c.get("mtp_num_hidden_layers", c.get("num_nextn_predict_layers", 0, int), int)
        experts = c.get("num_experts", None, int)
        if experts is None:
            raise ConfigError(f"{c.source}: missing required field 'num_experts'")
        if experts < 0:
            raise ConfigError(f"{c.source}: field 'num_experts' must be 0 (no MoE) or more, got {experts}")
        step = c.get("decoder_sparse_step", 1, int)
        if step <= 0:
            raise ConfigError(f"{c.source}: field 'decoder_sparse_step' must be positive, got {step}")
        dense = c.get("mlp_only_layers", [], list)
        layers = fields["num_hidden_layers"]
        sparse = [experts > 0 and i not in dense and (i + 1) % step == 0 for i in range(layers)]
        moe = moe_fields(config, norm_topk_prob=c.get("norm_topk_prob", True, bool)) if any(sparse) else {}
        intermediate = c.get("intermediate_size", 0, int) if all(sparse) else c.require("intermediate_size")
        return cls(**fields, sparse_layers=sparse, intermediate_size=intermediate, **moe)


def hybrid_fields(config: dict, fused_projections: bool) -> dict:
    """Everything but the feed-forward blocks, shared by Qwen3-Next and Qwen3.5, validated with errors
    that name the field."""
    c = ConfigReader(config)
    layers = c.require("num_hidden_layers")
    heads, kv_heads = c.require("num_attention_heads"), c.require("num_key_value_heads")
    if heads % kv_heads:
        raise ConfigError(f"{c.source}: field 'num_attention_heads' ({heads}) is not a multiple of "
                          f"num_key_value_heads ({kv_heads})")
    key_heads, value_heads = c.require("linear_num_key_heads"), c.require("linear_num_value_heads")
    if value_heads % key_heads:
        raise ConfigError(f"{c.source}: field 'linear_num_value_heads' ({value_heads}) is not a multiple of "
                          f"linear_num_key_heads ({key_heads})")
    if c.get("hidden_act", "silu", str) not in ("silu", "swish"):
        # It is also the Gated DeltaNet conv's activation, which is SiLU here (as in every checkpoint).
        raise ConfigError(f"{c.source}: field 'hidden_act' must be 'silu', got {config['hidden_act']!r}")
    head_dim = c.require("head_dim")
    quantization = config.get("quantization") or config.get("quantization_config")
    rope = rope_parameters(config)
    # 5.x keeps the factor in rope_parameters, 4.x at the top level; transformers' default is 0.25.
    partial = rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.25, float))
    if not isinstance(partial, (int, float)) or not 0 < partial <= 1 or int(head_dim * partial) % 2:
        raise ConfigError(f"{c.source}: field 'partial_rotary_factor' must be in (0, 1] and give an even "
                          f"number of rotary dims of head_dim {head_dim}, got {partial!r}")
    return dict(
        model_type=config.get("model_type", "qwen3_next"),
        hidden_size=c.require("hidden_size"),
        num_hidden_layers=layers,
        vocab_size=c.require("vocab_size"),
        rms_norm_eps=c.get("rms_norm_eps", 1e-6, float),
        max_position_embeddings=c.get("max_position_embeddings", 32768, int),
        tie_word_embeddings=c.get("tie_word_embeddings", False, bool),
        layer_types=layer_kinds(config, layers),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        attention_bias=c.get("attention_bias", False, bool),
        rope=rope,
        rotary_dims=int(head_dim * partial),
        linear_num_key_heads=key_heads,
        linear_num_value_heads=value_heads,
        linear_key_head_dim=c.require("linear_key_head_dim"),
        linear_value_head_dim=c.require("linear_value_head_dim"),
        linear_conv_kernel_dim=c.get("linear_conv_kernel_dim", 4, int),
        fused_projections=fused_projections,
        # Multimodal MLX checkpoints name modules `language_model.model.layers...`: sanitize drops the prefix.
        quantization={k.removeprefix("language_model."): v for k, v in quantization.items()}
        if isinstance(quantization, dict) else {},
    )


def layer_kinds(config: dict, layers: int) -> list:
    """Each layer's kind, from `layer_types` (5.x) or `full_attention_interval` (4.x)."""
    c = ConfigReader(config)
    types = config.get("layer_types")
    if types is None:
        interval = c.get("full_attention_interval", 4, int)
        if interval <= 0:
            raise ConfigError(f"{c.source}: field 'full_attention_interval' must be positive, got {interval}")
        return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers:
        raise ConfigError(f"{c.source}: field 'layer_types' must list num_hidden_layers ({layers}) layer kinds, "
                          f"got {types!r}")
    unknown = sorted(set(types) - set(LAYER_KINDS))
    if unknown:
        raise ConfigError(f"{c.source}: field 'layer_types' has unknown kinds {unknown} "
                          f"(supported: {', '.join(LAYER_KINDS)})")
    return list(types)


def moe_fields(config: dict, norm_topk_prob: bool) -> dict:
    """The MoE blocks' sizes (Qwen3-Next and Qwen3.5-MoE name them alike)."""
    c = ConfigReader(config)
    experts, top_k = c.require("num_experts"), c.require("num_experts_per_tok")
    if top_k > experts:
        raise ConfigError(f"{c.source}: field 'num_experts_per_tok' is {top_k}, more than the {experts} experts "
                          "('num_experts')")
    return dict(
        num_experts=experts,
        num_experts_per_tok=top_k,
        moe_intermediate_size=c.require("moe_intermediate_size"),
        shared_expert_intermediate_size=c.require("shared_expert_intermediate_size"),
        norm_topk_prob=norm_topk_prob,
    )


def mlx_lm_config(config: dict) -> dict:
    """An exported config with what mlx-lm 0.32 reads for these families, where it reads it: the layer
    pattern as `full_attention_interval` (it has no `layer_types`), `partial_rotary_factor` at the top
    level (Qwen3-Next); and Qwen3.5 as its checkpoints come, under the multimodal model type with the
    text model's settings (RoPE in `rope_parameters`) in `text_config`."""
    config = dict(config)
    types = config.get("layer_types")
    if types and "full_attention" in types and "full_attention_interval" not in config:
        n = types.index("full_attention") + 1
        if types == ["full_attention" if (i + 1) % n == 0 else "linear_attention" for i in range(len(types))]:
            config["full_attention_interval"] = n
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "partial_rotary_factor" in rope:
        config.setdefault("partial_rotary_factor", rope["partial_rotary_factor"])
    if config["model_type"] != "qwen3_next":
        config["model_type"] = config["model_type"].removesuffix("_text")
        outer = ("text_config", "vision_config", "quantization", "quantization_config")
        config["text_config"] = {k: v for k, v in config.items() if k not in outer}
    return config


class HybridLayer(nn.Module):
    """Pre-norm block: RMSNorm -> token mixer (Gated DeltaNet `linear_attn` or gated attention
    `self_attn`) -> residual -> RMSNorm -> MoE or MLP -> residual."""

    def __init__(self, mixer: nn.Module, is_linear: bool, mlp: nn.Module, hidden: int, eps: float):
        super().__init__()
        self.is_linear = is_linear
        if is_linear:
            self.linear_attn = mixer
        else:
            self.self_attn = mixer
        self.mlp = mlp
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        mixer = self.linear_attn if self.is_linear else self.self_attn
        h = x + mixer(self.input_layernorm(x), cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        rope = RoPE(args.rotary_dims, args.rope, args.max_position_embeddings)
        layers = [
            HybridLayer(self.make_mixer(args, kind, rope), kind == "linear_attention",
                        self.make_mlp(args, sparse), args.hidden_size, args.rms_norm_eps)
            for kind, sparse in zip(args.layer_types, args.sparse_layers)
        ]
        self.model = DecoderStack(
            args.vocab_size, args.hidden_size, layers, RMSNorm(args.hidden_size, args.rms_norm_eps)
        )
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        # The checkpoint's multi-token-prediction layer, as a layers/mtp.py block: its fusion (`fc`,
        # `pre_fc_norm_embedding`, `pre_fc_norm_hidden`) and final `norm` are DeepSeek's eh_proj, enorm,
        # hnorm and shared_head.norm, around one gated-attention MoE layer (vLLM's qwen3_next_mtp.py).
        # Only speculative decoding runs it (mlxmodels/proposers.py); `sanitize` drops it when the
        # checkpoint has no `mtp.*` tensors (transformers and mlx-lm leave them out).
        self.mtp = [
            MTPBlock(self.make_mixer(args, "full_attention", rope), self.make_mlp(args, args.num_experts > 0),
                     args.hidden_size, args.rms_norm_eps, embed=lambda ids: self.model.embed_tokens(ids),
                     head=self.output, make_cache=KVCache)
            for _ in range(min(args.mtp_layers, 1))
        ]

    def output(self, h: mx.array) -> mx.array:
        """The output projection (tied embedding or LM head), shared with the MTP block."""
        return self.model.embed_tokens.as_linear(h) if self.tie_embeddings else self.lm_head(h)

    @staticmethod
    def make_mixer(args: ModelArgs, kind: str, rope: RoPE) -> nn.Module:
        if kind == "linear_attention":
            return GatedDeltaNet(
                args.hidden_size, args.linear_num_key_heads, args.linear_num_value_heads,
                args.linear_key_head_dim, args.linear_value_head_dim, args.linear_conv_kernel_dim,
                args.rms_norm_eps, args.fused_projections,
            )
        return Attention(AttentionSpec(
            hidden_size=args.hidden_size, num_heads=args.num_attention_heads,
            num_kv_heads=args.num_key_value_heads, head_dim=args.head_dim, rope=rope,
            scale=1.0 / math.sqrt(args.head_dim), qkv_bias=args.attention_bias, out_bias=args.attention_bias,
            qk_norm="rms", norm_eps=args.rms_norm_eps, output_gate=True,
        ))

    @staticmethod
    def make_mlp(args: ModelArgs, sparse: bool) -> nn.Module:
        if not sparse:
            return GatedMLP(args.hidden_size, args.intermediate_size)
        return SparseMoE(
            args.hidden_size, args.moe_intermediate_size, args.num_experts, args.num_experts_per_tok,
            args.norm_topk_prob, shared_hidden_dims=args.shared_expert_intermediate_size, shared_gate=True,
        )

    def make_cache(self) -> list:
        return [SSMCache() if layer.is_linear else KVCache() for layer in self.layers]

    def sanitize(self, weights: dict) -> dict:
        weights = super().sanitize(self.take_mtp_block(weights))
        hugging_face_layout = any(
            k.endswith("conv1d.weight") and v.ndim == 3 and v.shape[1] == 1 and v.shape[2] != 1
            for k, v in weights.items()
        )
        out = {}
        for name, value in weights.items():
            name = name.replace(".switch_mlp.", ".experts.")  # mlx-lm's stacked experts
            if name.endswith("conv1d.weight"):
                value = depthwise_conv_weight(value)
            elif hugging_face_layout and (name.endswith(ZERO_CENTRED_NORMS) or name == "model.norm.weight"
                                          or name.startswith("mtp.0.") and name.endswith(MTP_NORMS)):
                value = value + 1.0
            out[name] = value
        q = self.args.quantization
        for i, kind in enumerate(self.args.layer_types):
            if kind == "linear_attention":
                for proj in ("in_proj_ba", "in_proj_b", "in_proj_a"):  # float here, quantized by mlx-lm
                    out = dequantize_router(out, f"model.layers.{i}.linear_attn.{proj}", q)
        mtp = [(f"mtp.{k}.mlp", isinstance(block.mlp, SparseMoE)) for k, block in enumerate(self.mtp)]
        for prefix, sparse in [(f"model.layers.{i}.mlp", s) for i, s in enumerate(self.args.sparse_layers)] + mtp:
            if sparse:
                out = split_fused_experts(out, prefix)
                out = stack_experts(out, prefix, self.args.num_experts, HF_EXPERT_NAMES)
                for router in ("gate", "shared_expert_gate"):
                    out = dequantize_router(out, f"{prefix}.{router}", q)
        return out

    def take_mtp_block(self, weights: dict) -> dict:
        """Hugging Face's `mtp.*` tensors under the block's names (`mtp.layers.0.*` -> `mtp.0.*`, `mtp.fc`
        -> `mtp.0.eh_proj`, ...); further MTP layers are dropped, and so is the block when the
        checkpoint has no MTP tensors at all (all of them when the config asks for no block, as
        Qwen3.5's reading of it does). A converted checkpoint already uses the block's names."""
        out, found = {}, False
        for name, value in weights.items():
            if not name.startswith("mtp."):
                out[name] = value
                continue
            found = True
            for theirs, ours in MTP_NAMES:
                if name.startswith(theirs):
                    name = ours + name[len(theirs):]
                    break
            if name.startswith("mtp.0.") and self.mtp:
                out[name] = value
        if not found:
            self.mtp = []
        return out


__all__ = ["Model", "ModelArgs"]
