"""Qwen2-MoE: Qwen2's attention (q/k/v biases) with sparse MoE blocks that add a shared expert.

Every token also goes through the shared expert, scaled by sigmoid(shared_expert_gate(x)). The
top-k weights are not renormalised unless `norm_topk_prob` says so. `decoder_sparse_step` and
`mlp_only_layers` turn some layers back into dense MLPs of `intermediate_size`.

Config dialects: transformers 4.x has no `qkv_bias` key (the biases are always there), 5.x
writes `qkv_bias`; RoPE is read from either dialect by llama's ModelArgs.
"""

from __future__ import annotations

from dataclasses import replace

from mlxmodels.config import ConfigReader
from mlxmodels.models import llama
from mlxmodels.models.moe_decoder import Model, MoEArgs, mlx_lm_renames, moe_fields  # noqa: F401 (export)


class ModelArgs(MoEArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        base = llama.ModelArgs.from_config(config)
        base = replace(base, attention_bias=c.get("qkv_bias", True, bool), out_bias=False)
        fields = moe_fields(config, base, norm_topk_default=False)
        return cls(
            **vars(base),
            **fields,
            shared_expert_intermediate_size=c.require("shared_expert_intermediate_size"),
            shared_expert_gate=True,
        )


__all__ = ["Model", "ModelArgs"]
