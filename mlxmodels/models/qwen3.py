"""Qwen3: Llama's block with an RMSNorm on each head's queries and keys before RoPE."""

from dataclasses import replace

from mlxmodels.models import llama
from mlxmodels.models.llama import Model


class ModelArgs(llama.ModelArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        return replace(super().from_config(config), qk_norm=True)


__all__ = ["Model", "ModelArgs"]
