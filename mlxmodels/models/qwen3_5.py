"""Qwen3.5 (dense): Qwen3-Next's hybrid (qwen3_next.py) with dense SwiGLU MLPs on every layer and the
Gated DeltaNet projections stored split (`in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`).

Its RoPE is multimodal (mrope): the rotary frequencies are split into temporal, height and width
sections (`mrope_section`, interleaved), each turned by its own position. For text the three
positions are the token's position, so the sections recombine into plain (partial) RoPE, which is
what runs here; the section settings in `rope_parameters` are read past.

Multimodal checkpoints (model_type "qwen3_5" with a `text_config`, which `read_config` merges) keep
the language model under `model.language_model.*` and a vision tower under `model.visual.*`:
`sanitize` keeps the text model and drops the vision tower (and the `mtp.*` weights). Text-only
configs say "qwen3_5_text". MLX-format checkpoints (mlx-lm's, and Orchard's converter's, which writes
mlx-lm's layout) hold the text model under `language_model.model.*` and `language_model.lm_head`.
"""

from __future__ import annotations

from mlxmodels.config import ConfigReader
from mlxmodels.models import qwen3_next

# Checkpoint prefixes of the text model -> ours (multimodal HF checkpoints; mlx-lm's own layout).
TEXT_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                 ("language_model.lm_head.", "lm_head."))
VISION_PREFIXES = ("model.visual.", "visual.", "vision_tower.")


class ModelArgs(qwen3_next.ModelArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        fields = qwen3_next.hybrid_fields(config, fused_projections=False)
        layers = fields["num_hidden_layers"]
        return cls(**fields, sparse_layers=[False] * layers,
                   intermediate_size=ConfigReader(config).require("intermediate_size"))


def mlx_lm_renames(model_type: str) -> tuple:
    """(ours, theirs) name fragments of MLX-format checkpoints (used by export, and by loading for
    per-module quantization entries): mlx-lm keeps Qwen3.5's text model under `language_model.` and
    stacks experts under `switch_mlp`. `sanitize` maps both back."""
    return qwen3_next.mlx_lm_renames(model_type) + (
        ("model.", "language_model.model."), ("lm_head", "language_model.lm_head"))


def text_model_weights(weights: dict) -> dict:
    """The language model's tensors under our names; the vision tower's dropped."""
    out = {}
    for name, value in weights.items():
        if name.startswith(VISION_PREFIXES):
            continue
        for old, new in TEXT_PREFIXES:
            if name.startswith(old):
                name = new + name[len(old):]
        out[name] = value
    return out


class Model(qwen3_next.Model):
    def sanitize(self, weights: dict) -> dict:
        return super().sanitize(text_model_weights(weights))


__all__ = ["Model", "ModelArgs"]
