"""Reading `config.json`: required fields with named errors, and RoPE settings in both dialects.

Hugging Face configs come in two dialects. Up to transformers 4.x the RoPE base and scaling sit at
the top level (`rope_theta`, `rope_scaling`, and Gemma's `rope_local_base_freq`); from 5.x they live
in `rope_parameters`, which may be nested per layer type (Gemma 3: `full_attention` /
`sliding_attention`). Every family reads RoPE through `rope_parameters()` so both work everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlxmodels.errors import ConfigError

_MISSING = object()


def read_config(model_dir: Path) -> dict:
    """The parsed config.json of `model_dir`, with a one-line error if it is absent or broken."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{model_dir}: no config.json (not a model directory)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    # Multimodal checkpoints keep the language model's settings under text_config.
    text_config = config.get("text_config")
    if isinstance(text_config, dict) and "hidden_size" not in config:
        config = {**config, **text_config}
    config.setdefault("_source", str(path))
    return config


class ConfigReader:
    """Typed access to a config dict; every error names the file and the field."""

    def __init__(self, config: dict):
        self.config = config
        self.source = config.get("_source", "config.json")

    def require(self, key: str, kind: type = int) -> Any:
        """A field that must be present; integers must also be positive (they are sizes)."""
        value = self.config.get(key)
        if value is None:
            raise ConfigError(f"{self.source}: missing required field '{key}'")
        value = self._check(key, value, kind)
        if kind is int and value <= 0:
            raise ConfigError(f"{self.source}: field '{key}' must be positive, got {value}")
        return value

    def get(self, key: str, default: Any, kind: type | None = None) -> Any:
        """An optional field; absent or null gives `default`."""
        value = self.config.get(key)
        if value is None:
            return default
        kind = kind or (type(default) if default is not None else None)
        return self._check(key, value, kind) if kind is not None else value

    def _check(self, key: str, value: Any, kind: type) -> Any:
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise ConfigError(f"{self.source}: field '{key}' must be {kind.__name__}, got {value!r}")
        return value


def rope_parameters(config: dict, layer_type: str | None = None, default_theta: float = 10000.0) -> dict:
    """RoPE settings for one kind of layer, from either config dialect.

    Returns a dict with at least `rope_type` and `rope_theta`, plus the scaling parameters
    (`factor`, `original_max_position_embeddings`, ...) as Hugging Face names them.
    """
    params = config.get("rope_parameters")
    if isinstance(params, dict):  # transformers >= 5
        if layer_type is not None and isinstance(params.get(layer_type), dict):
            params = params[layer_type]
        elif any(isinstance(v, dict) for v in params.values()):
            # Nested per layer type but no type asked for: the global (full attention) settings.
            params = params.get("full_attention") or next(v for v in params.values() if isinstance(v, dict))
        out = dict(params)
        out.setdefault("rope_theta", config.get("rope_theta", default_theta))
    else:  # transformers <= 4
        if layer_type == "sliding_attention" and "rope_local_base_freq" in config:
            # Gemma 3's local layers: their own base and never any scaling.
            return {"rope_type": "default", "rope_theta": float(config["rope_local_base_freq"])}
        out = dict(config.get("rope_scaling") or {})
        out["rope_theta"] = config.get("rope_theta", default_theta)
    rope_type = out.get("rope_type") or out.get("type") or "default"
    out["rope_type"] = rope_type
    out["rope_theta"] = float(out["rope_theta"])
    return out
