"""Llama 4 (Scout, Maverick): the text model. A Llama block whose differences are all options of the
shared layers:

- Layers alternate RoPE and NoPE: `no_rope_layers` lists 1 (RoPE) or 0 (NoPE) per layer; empty or
  absent, every `no_rope_layer_interval`-th layer is NoPE (default 4: layers 3, 7, ...).
- RoPE rotates consecutive pairs of features (the reference multiplies complex numbers built from
  pairs: `traditional` RoPE), with Llama 3 scaling in Scout (theta 500000).
- `layer_types` (derived from the NoPE pattern when absent): "chunked_attention" layers (the RoPE
  ones) cut positions into chunks of `attention_chunk_size` tokens and attend only within their
  chunk (`AttentionSpec.attention_chunk`, cached by `ChunkedKVCache`, which holds at most one chunk
  plus a little spare); "full_attention" layers (the NoPE ones) see everything before them.
- QK-norm (`use_qk_norm`): RMS normalisation without a weight on each head's q and k, RoPE layers only.
- Attention temperature on the NoPE layers (`attn_temperature_tuning`): the query at position p is
  scaled by 1 + attn_scale * log(1 + floor((p + 1) / floor_scale)), so it matters past floor_scale
  tokens (8192 in the releases).
- MoE layers (`moe_layers`, or every `interleave_moe_layer_step`-th layer: all of Scout's, every
  other one of Maverick's) route each token to its top-k experts (k = 1 in the releases) by a sigmoid
  of the router logits; the score multiplies the expert's input, not its output; a shared expert of
  the same size (`intermediate_size`) is added unweighted. Dense layers use `intermediate_size_mlp`.

Checkpoints name the feed-forward `feed_forward` and its router `router`; `sanitize` maps them to the
shared `mlp` / `gate` names. transformers keeps each layer's experts fused, transposed against a linear
layer's weight: `experts.gate_up_proj` [E, hidden, 2 x intermediate] (gate columns first) and
`experts.down_proj` [E, intermediate, hidden]. Multimodal checkpoints (model_type "llama4") prefix the
text model with `language_model.` and carry a vision tower, which is dropped. Orchard's converter writes
that multimodal layout (as mlx-lm reads Llama 4), with the experts stacked as `gate_proj` / `up_proj` /
`down_proj`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import ChunkedKVCache, KVCache
from mlxmodels.config import ConfigReader, rope_parameters
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.moe import SparseMoE, dequantize_router
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE
from mlxmodels.layers.transformer import CausalLM, DecoderLayer, DecoderStack
from mlxmodels.models.smollm3 import rope_layer_flags

DEFAULT_THETA = 500000.0
LAYER_TYPES = ("chunked_attention", "full_attention")
# Checkpoint prefixes of the text model in multimodal checkpoints -> ours; the rest is the vision tower.
TEXT_PREFIXES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."))
VISION_PREFIXES = ("vision_model.", "multi_modal_projector.")


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int  # each routed expert and the shared expert
    intermediate_size_mlp: int  # the dense layers' MLP
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    num_local_experts: int
    num_experts_per_tok: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    hidden_act: str
    attention_bias: bool
    use_qk_norm: bool
    attention_chunk_size: int | None
    rope_layers: list  # per layer: RoPE (True) or NoPE (False)
    chunked_layers: list  # per layer: chunked (True) or full (False) attention
    sparse_layers: list  # per layer: MoE (True) or dense MLP (False)
    temperature_tuning: bool
    floor_scale: float
    attn_scale: float
    rope: dict
    quantization: dict | None = None

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        hidden = c.require("hidden_size")
        layers = c.require("num_hidden_layers")
        heads = c.require("num_attention_heads")
        # transformers' defaults are Scout's; an explicit null means one KV head per query head and
        # hidden_size / heads for the head size.
        kv_heads = heads if _is_null(config, "num_key_value_heads") else c.get("num_key_value_heads", 8, int)
        head_dim = hidden // heads if _is_null(config, "head_dim") else c.get("head_dim", 128, int)
        for key, value in (("num_key_value_heads", kv_heads), ("head_dim", head_dim)):
            if value <= 0:
                raise ConfigError(f"{c.source}: field '{key}' must be positive, got {value}")
        if heads % kv_heads:
            raise ConfigError(
                f"{c.source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        experts = c.get("num_local_experts", 16, int)
        top_k = c.get("num_experts_per_tok", 1, int)
        if experts <= 0 or not 0 < top_k <= experts:
            raise ConfigError(
                f"{c.source}: field 'num_experts_per_tok' ({top_k}) must be between 1 and num_local_experts ({experts})"
            )
        # transformers reads an empty no_rope_layers as absent.
        no_rope = {**config, "no_rope_layers": config.get("no_rope_layers") or None}
        rope_layers = rope_layer_flags(ConfigReader(no_rope), layers)
        chunked = chunked_layer_flags(c, rope_layers)
        chunk = c.get("attention_chunk_size", None, int) if "attention_chunk_size" in config else 8192
        if any(chunked) and (chunk is None or chunk <= 0):
            raise ConfigError(
                f"{c.source}: field 'attention_chunk_size' must be a positive number of tokens when "
                f"'layer_types' has chunked_attention layers, got {chunk!r}"
            )
        floor_scale = c.get("floor_scale", 8192.0, float)
        if floor_scale <= 0:
            raise ConfigError(f"{c.source}: field 'floor_scale' must be positive, got {floor_scale}")
        return cls(
            model_type=config.get("model_type", "llama4_text"),
            hidden_size=hidden,
            num_hidden_layers=layers,
            intermediate_size=c.require("intermediate_size"),
            intermediate_size_mlp=c.get("intermediate_size_mlp", 16384, int),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=c.require("vocab_size"),
            num_local_experts=experts,
            num_experts_per_tok=top_k,
            rms_norm_eps=c.get("rms_norm_eps", 1e-5, float),
            max_position_embeddings=c.get("max_position_embeddings", 131072, int),
            tie_word_embeddings=c.get("tie_word_embeddings", False, bool),
            hidden_act=c.get("hidden_act", "silu", str),
            attention_bias=c.get("attention_bias", False, bool),
            use_qk_norm=c.get("use_qk_norm", True, bool),
            attention_chunk_size=chunk if any(chunked) else None,
            rope_layers=rope_layers,
            chunked_layers=chunked,
            sparse_layers=moe_layer_flags(c, layers),
            temperature_tuning=temperature_tuning(c),
            floor_scale=floor_scale,
            attn_scale=c.get("attn_scale", 0.1, float),
            rope=rope_parameters(config, default_theta=DEFAULT_THETA),
            quantization=config.get("quantization") or config.get("quantization_config"),
        )


def _is_null(config: dict, key: str) -> bool:
    return key in config and config[key] is None


def chunked_layer_flags(c: ConfigReader, rope_layers: list) -> list:
    """Per layer: chunked attention? From `layer_types`, or else the RoPE layers (as transformers derives it)."""
    types = c.get("layer_types", None, list)
    if types is None:
        return list(rope_layers)
    if len(types) != len(rope_layers):
        raise ConfigError(
            f"{c.source}: 'layer_types' lists {len(types)} layers, num_hidden_layers is {len(rope_layers)}"
        )
    unknown = sorted({str(t) for t in types} - set(LAYER_TYPES))
    if unknown:
        raise ConfigError(
            f"{c.source}: field 'layer_types' has unknown kinds {unknown} (known: {', '.join(LAYER_TYPES)})"
        )
    return [t == "chunked_attention" for t in types]


def moe_layer_flags(c: ConfigReader, layers: int) -> list:
    """Per layer: MoE? `moe_layers` lists their indices; without it every `interleave_moe_layer_step`-th
    layer is one (the step's last: layers step - 1, 2 step - 1, ...)."""
    listed = c.get("moe_layers", None, list)
    if listed is None:
        step = c.get("interleave_moe_layer_step", 1, int)
        if step <= 0:
            raise ConfigError(f"{c.source}: field 'interleave_moe_layer_step' must be positive, got {step}")
        return [(i + 1) % step == 0 for i in range(layers)]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < layers for i in listed):
        raise ConfigError(f"{c.source}: field 'moe_layers' must list layer indices below {layers}, got {listed!r}")
    return [i in listed for i in range(layers)]


def temperature_tuning(c: ConfigReader) -> bool:
    """`attn_temperature_tuning`: a bool, or (transformers 4.51's default, 4) a number read as a switch."""
    value = c.config.get("attn_temperature_tuning", True)
    if not isinstance(value, (bool, int)):
        raise ConfigError(f"{c.source}: field 'attn_temperature_tuning' must be bool, got {value!r}")
    return bool(value)


def mlx_lm_renames(model_type: str) -> tuple:
    """(ours, theirs) name fragments for the checkpoints mlx-lm reads: its Llama 4 is the multimodal
    model, the text model under `language_model.`, with transformers' `feed_forward` / `router` names."""
    return ((".mlp.gate.", ".feed_forward.router."), (".mlp.", ".feed_forward."),
            ("model.", "language_model.model."), ("lm_head", "language_model.lm_head"))


def mlx_lm_config(config: dict) -> dict:
    """An exported config as mlx-lm 0.32 reads Llama 4: the multimodal model_type "llama4" with the
    text model's settings in `text_config` (RoPE as `rope_theta` / `rope_scaling`, every field it
    requires present), as the releases are laid out. The top level holds only what the multimodal
    config has (transformers' Llama4Config, which mlx-lm's tokenizer loading builds, rejects RoPE
    settings there); Orchard's `read_config` merges `text_config` back."""
    args = ModelArgs.from_config(config)
    outer = ("quantization", "quantization_config", "vision_config", "tie_word_embeddings", "transformers_version")
    text = {k: v for k, v in config.items() if k not in outer + ("text_config", "rope_parameters", "architectures")}
    rope = dict(args.rope)
    text.update(
        model_type="llama4_text", rope_theta=rope.pop("rope_theta"),
        rope_scaling=rope if rope["rope_type"] != "default" else None,
        num_key_value_heads=args.num_key_value_heads, head_dim=args.head_dim,
        intermediate_size_mlp=args.intermediate_size_mlp, num_local_experts=args.num_local_experts,
        num_experts_per_tok=args.num_experts_per_tok, rms_norm_eps=args.rms_norm_eps,
        max_position_embeddings=args.max_position_embeddings, attention_bias=args.attention_bias,
        use_qk_norm=args.use_qk_norm, attention_chunk_size=args.attention_chunk_size,
        interleave_moe_layer_step=config.get("interleave_moe_layer_step") or 1,
        tie_word_embeddings=args.tie_word_embeddings,
    )
    return {**{k: config[k] for k in outer if k in config}, "model_type": "llama4", "text_config": text}


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        rope = RoPE(args.head_dim, args.rope, args.max_position_embeddings, traditional=True)
        layers = []
        for uses_rope, chunked, sparse in zip(args.rope_layers, args.chunked_layers, args.sparse_layers):
            spec = AttentionSpec(
                hidden_size=args.hidden_size, num_heads=args.num_attention_heads,
                num_kv_heads=args.num_key_value_heads, head_dim=args.head_dim,
                rope=rope if uses_rope else None, scale=1.0 / math.sqrt(args.head_dim),
                qkv_bias=args.attention_bias, out_bias=args.attention_bias,
                qk_norm="unit_rms" if args.use_qk_norm and uses_rope else None, norm_eps=args.rms_norm_eps,
                attention_chunk=args.attention_chunk_size if chunked else None,
                query_temperature=(args.floor_scale, args.attn_scale)
                if args.temperature_tuning and not uses_rope else None,
            )
            if sparse:
                mlp = SparseMoE(
                    args.hidden_size, args.intermediate_size, args.num_local_experts, args.num_experts_per_tok,
                    norm_topk_prob=False, act=args.hidden_act, shared_hidden_dims=args.intermediate_size,
                    scoring="sigmoid", weight_inputs=True,
                )
            else:
                mlp = GatedMLP(args.hidden_size, args.intermediate_size_mlp, args.hidden_act)
            layers.append(DecoderLayer(Attention(spec), mlp, RMSNorm, args.hidden_size, args.rms_norm_eps, "pre"))
        self.model = DecoderStack(
            args.vocab_size, args.hidden_size, layers, RMSNorm(args.hidden_size, args.rms_norm_eps)
        )
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def make_cache(self) -> list:
        chunk = self.args.attention_chunk_size
        return [ChunkedKVCache(chunk) if chunked else KVCache() for chunked in self.args.chunked_layers]

    def sanitize(self, weights: dict) -> dict:
        renamed = {}
        for name, value in weights.items():
            if name.startswith(VISION_PREFIXES):
                continue
            for theirs, ours in TEXT_PREFIXES:
                if name.startswith(theirs):
                    name = ours + name[len(theirs):]
                    break
            renamed[name.replace(".feed_forward.", ".mlp.").replace(".mlp.router.", ".mlp.gate.")] = value
        weights = super().sanitize(renamed)
        for i, sparse in enumerate(self.args.sparse_layers):
            if sparse:
                prefix = f"model.layers.{i}.mlp"
                weights = split_transposed_experts(weights, prefix)
                weights = dequantize_router(weights, f"{prefix}.gate", self._router_quantization(f"{prefix}.gate"))
        return weights

    def _router_quantization(self, router: str) -> dict | None:
        """The config's quantization, where a per-module entry for the router may use the name mlx-lm
        gives it (`language_model.model.layers.N.feed_forward.router`)."""
        q = self.args.quantization
        if not isinstance(q, dict) or router in q:
            return q
        theirs = router + "."
        for ours, mlx_lm in mlx_lm_renames(self.args.model_type):
            theirs = theirs.replace(ours, mlx_lm)
        return {**q, router: q[theirs[:-1]]} if theirs[:-1] in q else q


def split_transposed_experts(weights: dict, prefix: str) -> dict:
    """transformers' fused Llama 4 experts, `gate_up_proj` [E, hidden, 2I] (gate columns first) and
    `down_proj` [E, I, hidden], -> stacked linear weights [E, out, in] under our names."""
    fused = weights.pop(f"{prefix}.experts.gate_up_proj", None)
    if fused is not None:
        gate, up = mx.split(fused, 2, axis=-1)
        weights[f"{prefix}.experts.gate_proj.weight"] = gate.swapaxes(-1, -2)
        weights[f"{prefix}.experts.up_proj.weight"] = up.swapaxes(-1, -2)
    down = weights.pop(f"{prefix}.experts.down_proj", None)
    if down is not None:
        weights[f"{prefix}.experts.down_proj.weight"] = down.swapaxes(-1, -2)
    return weights


__all__ = ["Model", "ModelArgs"]
