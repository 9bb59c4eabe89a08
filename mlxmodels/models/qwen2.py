"""Qwen2 / Qwen2.5: Llama's block with biases on the q/k/v projections (never on o_proj)."""

from dataclasses import replace

from mlxmodels.models import llama
from mlxmodels.models.llama import Model


class ModelArgs(llama.ModelArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        return replace(super().from_config(config), attention_bias=True, out_bias=False)


__all__ = ["Model", "ModelArgs"]
