"""SmolLM3: Llama's block with RoPE switched off in some layers (NoPE).

- `no_rope_layers` lists per layer 1 (RoPE) or 0 (NoPE: attention sees no positions at all; the
  causal mask alone orders the tokens). Without it every `no_rope_layer_interval`-th layer is NoPE
  (default 4: layers 3, 7, 11, ...).
- Sliding windows follow `layer_types`. Without it, transformers makes the NoPE layers slide when
  `use_sliding_window` is set and a `sliding_window` given, and every layer full otherwise. A
  "sliding_attention" entry slides whatever `use_sliding_window` says, as transformers' eager and
  SDPA paths do (only its flash-attention path reads the flag).
- `attention_bias` covers q, k, v and o; `mlp_bias` the MLP. Embeddings tied by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlxmodels.config import ConfigReader
from mlxmodels.errors import ConfigError
from mlxmodels.models import llama

LAYER_TYPES = ("full_attention", "sliding_attention")
# transformers' SmolLM3Config defaults where they differ from llama.ModelArgs' (an explicit null stays
# null: a null num_key_value_heads means one KV head per query head there too).
DEFAULTS = {
    "num_key_value_heads": 4, "rope_theta": 2_000_000.0, "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}


@dataclass
class ModelArgs(llama.ModelArgs):
    rope_layers: list = field(default_factory=list)  # per layer: RoPE (True) or NoPE (False)

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        config = {**DEFAULTS, **config}
        c = ConfigReader(config)
        layers = c.require("num_hidden_layers")
        rope_layers = rope_layer_flags(c, layers)
        layer_types = c.get("layer_types", None, list)
        if layer_types is None:
            slide = c.get("use_sliding_window", False, bool) and config.get("sliding_window") is not None
            layer_types = ["sliding_attention" if slide and not rope else "full_attention" for rope in rope_layers]
        unknown = sorted({str(t) for t in layer_types} - set(LAYER_TYPES))
        if unknown:
            raise ConfigError(
                f"{c.source}: field 'layer_types' has unknown kinds {unknown} (known: {', '.join(LAYER_TYPES)})"
            )
        if "sliding_attention" in layer_types:
            c.require("sliding_window")
        base = llama.ModelArgs.from_config({**config, "layer_types": layer_types})
        return cls(**vars(base), rope_layers=rope_layers)


def rope_layer_flags(c: ConfigReader, layers: int) -> list:
    """Per layer: does attention apply RoPE? From `no_rope_layers` (1 = RoPE; transformers allows a
    longer list and reads its first entries) or else from `no_rope_layer_interval`."""
    flags = c.get("no_rope_layers", None, list)
    if flags is None:
        interval = c.get("no_rope_layer_interval", 4, int)
        if interval <= 0:
            raise ConfigError(f"{c.source}: field 'no_rope_layer_interval' must be positive, got {interval}")
        return [(i + 1) % interval != 0 for i in range(layers)]
    if len(flags) < layers or any(f not in (0, 1) for f in flags):
        raise ConfigError(
            f"{c.source}: field 'no_rope_layers' must list 0 (NoPE) or 1 (RoPE) for each of the "
            f"{layers} layers, got {flags!r}"
        )
    return [bool(f) for f in flags[:layers]]


class Model(llama.Model):
    def __init__(self, args: ModelArgs):
        super().__init__(args)
        for layer, uses_rope in zip(self.layers, args.rope_layers):
            if not uses_rope:
                layer.self_attn.rope = None  # NoPE: the layer's attention sees no positions


__all__ = ["Model", "ModelArgs"]
