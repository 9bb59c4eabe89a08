"""Mamba-2: Mamba's residual skeleton with the multi-head SSD mixer (grouped B/C, gated RMSNorm,
chunked scan; see layers/ssm.py).

`time_step_limit` clamps dt; its upper bound is infinite by default, which transformers writes to
JSON as `Infinity` (4.x) or `{"__float__": "Infinity"}` (5.x): both are read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlxmodels.config import ConfigReader
from mlxmodels.errors import ConfigError
from mlxmodels.layers.ssm import Mamba2Mixer
from mlxmodels.models import mamba


@dataclass
class ModelArgs(mamba.ModelArgs):
    num_heads: int = 0
    head_dim: int = 0
    n_groups: int = 1
    chunk_size: int = 256
    time_step_limit: tuple = (0.0, math.inf)

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        base = mamba.ModelArgs.from_config({"tie_word_embeddings": False, **config})
        heads, head_dim = c.require("num_heads"), c.require("head_dim")
        groups = c.get("n_groups", 1, int)
        if groups <= 0 or heads % groups:
            raise ConfigError(f"{c.source}: field 'n_groups' ({groups}) must divide num_heads ({heads})")
        if heads * head_dim != base.intermediate_size:
            raise ConfigError(
                f"{c.source}: num_heads x head_dim = {heads * head_dim}, but the inner size "
                f"('intermediate_size' or expand x hidden_size) is {base.intermediate_size}"
            )
        return cls(
            **vars(base),
            num_heads=heads,
            head_dim=head_dim,
            n_groups=groups,
            chunk_size=c.get("chunk_size", 256, int),
            time_step_limit=_time_step_limit(config.get("time_step_limit"), c.source),
        )


def _time_step_limit(value, source: str) -> tuple:
    if value is None:
        return (0.0, math.inf)

    def number(v):
        if isinstance(v, dict) and "__float__" in v:
            v = v["__float__"]
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: field 'time_step_limit' must be two numbers, got {value!r}") from None

    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{source}: field 'time_step_limit' must be two numbers, got {value!r}")
    return (number(value[0]), number(value[1]))


class Model(mamba.Model):
    @staticmethod
    def make_mixer(args: ModelArgs):
        return Mamba2Mixer(
            args.hidden_size, args.num_heads, args.head_dim, args.state_size, args.n_groups, args.conv_kernel,
            args.chunk_size, args.layer_norm_epsilon, args.use_bias, args.use_conv_bias, args.time_step_limit,
        )


__all__ = ["Model", "ModelArgs"]
