"""OLMo 3: OLMo 2 (post-norm, full-width QK-norm) with sliding-window layers.

`layer_types` lists each layer's attention ("sliding_attention" or "full_attention"); without it
every fourth layer is full and the others slide (transformers' default), over `sliding_window`
positions (default 4096). RoPE is per layer type: the full layers take the configured scaling (YaRN
in the long-context checkpoints), the sliding layers plain RoPE with the same base. In the 4.x
dialect that is implicit (`rope_scaling` belongs to the full layers); 5.x nests `rope_parameters`
by layer type.
"""

from __future__ import annotations

from dataclasses import replace

from mlxmodels.config import ConfigReader, rope_parameters
from mlxmodels.errors import ConfigError
from mlxmodels.models import olmo2
from mlxmodels.models.olmo2 import Model

LAYER_TYPES = ("sliding_attention", "full_attention")
DEFAULTS = {**olmo2.DEFAULTS, "sliding_window": 4096, "rope_theta": 500_000.0}


class ModelArgs(olmo2.ModelArgs):
    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        config = {**DEFAULTS, **config}
        c = ConfigReader(config)
        layers = c.require("num_hidden_layers")
        layer_types = c.get("layer_types", None, list)
        if layer_types is None:
            layer_types = ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(layers)]
        if len(layer_types) != layers:
            raise ConfigError(
                f"{c.source}: 'layer_types' lists {len(layer_types)} layers, num_hidden_layers is {layers}"
            )
        unknown = sorted({str(t) for t in layer_types} - set(LAYER_TYPES))
        if unknown:
            raise ConfigError(
                f"{c.source}: field 'layer_types' has unknown kinds {unknown} (known: {', '.join(LAYER_TYPES)})"
            )
        window = c.require("sliding_window") if "sliding_attention" in layer_types else None
        args = olmo2.ModelArgs.from_config(config)
        return cls(**vars(replace(
            args,
            rope=rope_parameters(config, "full_attention"),
            sliding_rope=sliding_rope(config),
            layer_windows=[window if t == "sliding_attention" else None for t in layer_types],
        )))


def sliding_rope(config: dict) -> dict:
    """The sliding layers' RoPE: their own entry when `rope_parameters` is nested by layer type (or
    the `rope_local_base_freq` Orchard's converter writes for it in the 4.x dialect), otherwise plain
    RoPE at the configured base (the scaling is the full layers' alone)."""
    params = config.get("rope_parameters")
    nested = isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict)
    if nested or "rope_local_base_freq" in config:
        return rope_parameters(config, "sliding_attention")
    return {"rope_type": "default", "rope_theta": rope_parameters(config, "full_attention")["rope_theta"]}


__all__ = ["Model", "ModelArgs"]
