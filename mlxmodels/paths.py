"""Where Orchard keeps things: the model cache and the user's config file.

`ORCHARD_CACHE_DIR` and `ORCHARD_CONFIG_DIR` override the platform defaults (tests use them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

from mlxmodels.errors import ConfigError


def cache_dir() -> Path:
    return Path(os.environ.get("ORCHARD_CACHE_DIR") or platformdirs.user_cache_dir("orchard"))


def config_dir() -> Path:
    return Path(os.environ.get("ORCHARD_CONFIG_DIR") or platformdirs.user_config_dir("orchard"))


def user_settings() -> dict:
    """The user's config.toml (e.g. `default_model = "qwen3-0.6b"`), or {} if there is none."""
    path = config_dir() / "config.toml"
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
