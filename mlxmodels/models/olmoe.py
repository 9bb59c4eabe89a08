"""OLMoE: a MoE transformer whose q and k are RMS-normalised across all heads (not per head).

Also: optional clipping of q, k, v to ±`clip_qkv`, `attention_bias` on all four projections, and
top-k weights renormalised only if `norm_topk_prob`.
"""

from __future__ import annotations

from mlxmodels.config import ConfigReader
from mlxmodels.models import llama
from mlxmodels.models.moe_decoder import Model, MoEArgs, mlx_lm_renames, moe_fields  # noqa: F401 (export)


class ModelArgs(MoEArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        base = llama.ModelArgs.from_config(config)
        clip = ConfigReader(config).get("clip_qkv", None, float)
        return cls(
            **vars(base),
            **moe_fields(config, base, norm_topk_default=False),
            qk_norm_full_width=True,
            clip_qkv=clip,
        )


__all__ = ["Model", "ModelArgs"]
