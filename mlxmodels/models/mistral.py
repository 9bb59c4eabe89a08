"""Mistral: Llama's block with a sliding window on every layer (when the config sets one)."""

from mlxmodels.models.llama import Model, ModelArgs

__all__ = ["Model", "ModelArgs"]
