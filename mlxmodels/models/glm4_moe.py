"""GLM-4.5 / GLM-4.6 (and GLM-4.5-Air): grouped-query attention with DeepSeek-V3's mixture of experts.

The DeepSeek decoder of deepseek_v2.py with standard attention instead of MLA:
- attention: GQA (`num_key_value_heads`), `head_dim` (default hidden / heads), biases on q/k/v when
  `attention_bias` (never on o_proj), optional RMSNorm on each head's q and k (`use_qk_norm`, eps
  `rms_norm_eps`), RoPE over the first `partial_rotary_factor` (default 0.5) of each head, rotating
  halves (not DeepSeek's interleaved pairs); its cache a plain `KVCache` (so `--kv-bits` quantizes it);
- feed-forward: dense SwiGLU on the first `first_k_dense_replace` layers, then DeepSeek-V3's MoE
  (sigmoid router with correction bias, groups, renormalised top-k, routed scaling, shared experts);
  transformers ignores `moe_layer_freq` here, and so does this module;
- `num_nextn_predict_layers` multi-token-prediction blocks after the decoder layers
  (`model.layers.{num_hidden_layers + k}.*`), loaded into `model.mtp` (layers/mtp.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.nn as nn

from mlxmodels.cache import KVCache
from mlxmodels.config import ConfigReader, rope_parameters
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.rope import RoPE
from mlxmodels.models import deepseek_v2, deepseek_v3
from mlxmodels.models.deepseek_v2 import common_fields

# transformers' defaults for GLM-4.5.
DEFAULTS = dict(first_k_dense_replace=1, n_shared_experts=1, routed_scaling_factor=1.0, max_position_embeddings=131072,
                rms_norm_eps=1e-5)


@dataclass
class ModelArgs(deepseek_v2.ModelArgs):
    num_key_value_heads: int = 0
    head_dim: int = 0
    rotary_dims: int = 0
    use_qk_norm: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        fields = common_fields(c, DEFAULTS)
        fields["moe_layer_freq"] = 1  # transformers' GLM-4.5 has MoE on every layer after the dense ones
        heads = c.require("num_attention_heads")
        kv_heads = c.get("num_key_value_heads", heads, int)
        if heads % kv_heads:
            raise ConfigError(f"{c.source}: field 'num_key_value_heads' ({kv_heads}) must divide "
                              f"num_attention_heads ({heads})")
        head_dim = c.get("head_dim", fields["hidden_size"] // heads, int)
        rope = rope_parameters(config)
        # 5.x keeps the factor in rope_parameters, 4.x at the top level; transformers' default is 0.5.
        partial = rope.pop("partial_rotary_factor", None)
        partial = c.get("partial_rotary_factor", 0.5, float) if partial is None else partial
        valid = isinstance(partial, (int, float)) and not isinstance(partial, bool) and 0 < partial <= 1
        rotary_dims = int(head_dim * partial) if valid else 0
        if not rotary_dims or rotary_dims % 2:
            raise ConfigError(f"{c.source}: field 'partial_rotary_factor' must be in (0, 1] and leave an even number "
                              f"of rotated features per head (head_dim {head_dim}), got {partial!r}")
        return cls(
            **fields,
            **deepseek_v3.sigmoid_routing(c, n_group=1, topk_group=1),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rotary_dims=rotary_dims,
            rope=rope,
            rope_traditional=False,
            attention_bias=c.get("attention_bias", False, bool),
            use_qk_norm=c.get("use_qk_norm", False, bool),
            attention_scale=head_dim**-0.5,
            num_nextn_predict_layers=deepseek_v3.mtp_layers(c),
        )


def mlx_lm_config(config: dict) -> dict:
    """The fields mlx-lm 0.32's glm4_moe requires at the top level, with transformers' defaults
    (`rope_scaling` among them, null for plain RoPE)."""
    config = dict(config)
    args = ModelArgs.from_config(config)
    config.pop("rope_parameters", None)
    scaling = {k: v for k, v in args.rope.items() if k != "rope_theta"}
    config.update(rope_theta=args.rope["rope_theta"],
                  rope_scaling=None if args.rope["rope_type"] == "default" else scaling)
    config.setdefault("head_dim", args.head_dim)
    config.setdefault("partial_rotary_factor", args.rotary_dims / args.head_dim)
    config.update(use_qk_norm=args.use_qk_norm, attention_bias=args.attention_bias, n_group=args.n_group,
                  topk_group=args.topk_group, n_shared_experts=args.n_shared_experts,
                  first_k_dense_replace=args.first_k_dense_replace, norm_topk_prob=args.norm_topk_prob,
                  routed_scaling_factor=args.routed_scaling_factor, tie_word_embeddings=args.tie_word_embeddings,
                  max_position_embeddings=args.max_position_embeddings)
    return config


class Model(deepseek_v3.Model):
    def make_rope(self) -> RoPE:
        a = self.args
        return RoPE(a.rotary_dims, a.rope, a.max_position_embeddings, traditional=False)

    def attention(self) -> nn.Module:
        a = self.args
        return Attention(AttentionSpec(
            hidden_size=a.hidden_size,
            num_heads=a.num_attention_heads,
            num_kv_heads=a.num_key_value_heads,
            head_dim=a.head_dim,
            rope=self.rope,
            scale=a.attention_scale,
            qkv_bias=a.attention_bias,
            out_bias=False,
            qk_norm="rms" if a.use_qk_norm else None,
            norm_eps=a.rms_norm_eps,
        ))

    def attention_cache(self):
        return KVCache()


mlx_lm_renames = deepseek_v2.mlx_lm_renames
mlx_lm_prefixes = deepseek_v2.mlx_lm_prefixes

__all__ = ["Model", "ModelArgs", "mlx_lm_config", "mlx_lm_prefixes", "mlx_lm_renames"]
