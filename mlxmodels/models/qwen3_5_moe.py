"""Qwen3.5-MoE (and Qwen3.6 MoE): Qwen3.5 (qwen3_5.py) with a sparse MoE block on every layer, as
Qwen3-Next's (softmax router, top-k always renormalised, sigmoid-gated shared expert). Its configs
have no `decoder_sparse_step`, `mlp_only_layers`, `norm_topk_prob` or `intermediate_size`.
"""

from __future__ import annotations

from mlxmodels.models import qwen3_next
from mlxmodels.models.qwen3_5 import Model, mlx_lm_renames  # noqa: F401 (mlx_lm_renames: export)


class ModelArgs(qwen3_next.ModelArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        fields = qwen3_next.hybrid_fields(config, fused_projections=False)
        layers = fields["num_hidden_layers"]
        return cls(**fields, sparse_layers=[True] * layers, **qwen3_next.moe_fields(config, norm_topk_prob=True))


__all__ = ["Model", "ModelArgs"]
