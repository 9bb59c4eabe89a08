"""Qwen3-MoE: Qwen3's attention (per-head q/k RMSNorm, no biases) with sparse MoE blocks.

No shared expert; `norm_topk_prob` (true in released checkpoints) renormalises the top-k weights.
The expert count is `num_experts` in transformers 4.x configs and `num_local_experts` in 5.x.
"""

from __future__ import annotations

from mlxmodels.models import llama
from mlxmodels.models.moe_decoder import Model, MoEArgs, mlx_lm_renames, moe_fields  # noqa: F401 (export)


class ModelArgs(MoEArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        base = llama.ModelArgs.from_config(config)
        base.qk_norm = True
        return cls(**vars(base), **moe_fields(config, base, norm_topk_default=False))


__all__ = ["Model", "ModelArgs"]
