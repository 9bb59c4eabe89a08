"""DeepSeek-V3 / R1, and the checkpoints that declare it: Kimi K2 (`kimi_k2`), Moonlight.

DeepSeek-V2's decoder (deepseek_v2.py: MLA, dense layers then MoE layers, shared experts), with:
- the router of layers/moe.py's `scoring="sigmoid"`: sigmoid scores, `e_score_correction_bias`
  (`mlp.gate.e_score_correction_bias`) steering only the choice, top-k within the `topk_group` of
  `n_group` groups whose two best biased scores sum highest, the chosen unbiased scores renormalised
  when `norm_topk_prob`, times `routed_scaling_factor`. transformers ignores `topk_method` and
  `scoring_func` here ("noaux_tc" and "sigmoid" in every release), and so does this module;
- RoPE over interleaved pairs when `rope_interleave` (the default), over halves otherwise;
- `num_nextn_predict_layers` multi-token-prediction blocks (`model.layers.{num_hidden_layers + k}.*`),
  loaded into `model.mtp` (layers/mtp.py) when the checkpoint carries them; generation ignores them.
"""

from __future__ import annotations

from mlxmodels.config import ConfigReader
from mlxmodels.errors import ConfigError
from mlxmodels.models import deepseek_v2
from mlxmodels.models.deepseek_v2 import check_groups, common_fields, mla_fields, spelling

# transformers' defaults where DeepSeek-V3's configuration differs from V2's.
DEFAULTS = dict(first_k_dense_replace=3, n_shared_experts=1, routed_scaling_factor=2.5, max_position_embeddings=4096,
                rms_norm_eps=1e-6)


class ModelArgs(deepseek_v2.ModelArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        return cls(**common_fields(c, DEFAULTS), **mla_fields(c, traditional=c.get("rope_interleave", True, bool)),
                   **sigmoid_routing(c, n_group=8, topk_group=4), num_nextn_predict_layers=mtp_layers(c))


def sigmoid_routing(c: ConfigReader, n_group: int, topk_group: int) -> dict:
    """DeepSeek-V3's router settings (`n_group` / `topk_group`: the family's transformers defaults)."""
    config = dict(c.config)
    config.setdefault("n_group", n_group)
    config.setdefault("topk_group", topk_group)
    c = ConfigReader(config)
    experts = config[spelling(config, ("n_routed_experts", "num_local_experts", "num_experts"))]
    groups, best = check_groups(c, experts, config["num_experts_per_tok"], top2=True)
    return dict(scoring="sigmoid", norm_topk_prob=c.get("norm_topk_prob", True, bool), n_group=groups,
                topk_group=best)


def mtp_layers(c: ConfigReader) -> int:
    key = spelling(c.config, ("num_nextn_predict_layers", "num_mtp_layers"))
    count = c.get(key, 0, int)
    if count < 0:
        raise ConfigError(f"{c.source}: field '{key}' must be 0 or more, got {count}")
    return count


class Model(deepseek_v2.Model):
    """DeepSeek-V2's model: every difference lies in the settings `ModelArgs` reads."""


mlx_lm_renames = deepseek_v2.mlx_lm_renames
mlx_lm_prefixes = deepseek_v2.mlx_lm_prefixes

__all__ = ["Model", "ModelArgs", "mlx_lm_prefixes", "mlx_lm_renames"]
