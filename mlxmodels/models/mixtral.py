"""Mixtral: Llama's block with a sparse MoE (the shared decoder of `moe_decoder.py`) whose top-k
router weights are always renormalised to one, whatever the config says."""

from __future__ import annotations

from mlxmodels.models import llama
from mlxmodels.models.moe_decoder import Model, MoEArgs, mlx_lm_renames, moe_fields  # noqa: F401 (export)


class ModelArgs(MoEArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        base = llama.ModelArgs.from_config(config)
        fields = moe_fields(config, base, norm_topk_default=True)
        fields["norm_topk_prob"] = True
        return cls(**vars(base), **fields)


__all__ = ["Model", "ModelArgs"]
