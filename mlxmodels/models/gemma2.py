"""Gemma 2: Gemma 3's text model (gemma3_text.py) without the per-head q/k norms, read with Gemma 2's defaults.

What sets it apart from Llama, all of it in gemma3_text's `Model`: embeddings scaled by
sqrt(hidden_size) (rounded to the activation dtype); a (1 + w) RMSNorm before *and* after attention
and the MLP; GeGLU (tanh GELU); scores scaled by `query_pre_attn_scalar`^-1/2 instead of head_dim;
sliding-window and global layers alternating, sliding first; tanh soft-capping of the attention
scores (`attn_logit_softcapping`) and of the final logits (`final_logit_softcapping`). One RoPE
(`rope_theta`) serves both kinds of layer.
"""

from __future__ import annotations

from mlxmodels.models import gemma3_text

# transformers' Gemma2Config values for fields a config.json leaves out. Only absent fields take
# them: an explicit null soft-cap still means no soft-capping, as in the reference.
DEFAULTS = {
    "sliding_window_pattern": 2,  # 4.x configs list no layer types: local, global, local, ...
    "rope_theta": 10_000.0,
    "query_pre_attn_scalar": 256.0,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "max_position_embeddings": 8192,
}


class ModelArgs(gemma3_text.ModelArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        args = super().from_config({**DEFAULTS, **config})
        args.qk_norm = False
        return args


class Model(gemma3_text.Model):
    """Gemma 3's text model built from Gemma 2's arguments (no q/k norms, one RoPE)."""
