"""Small model directories made on the fly with random weights, for tests of loading and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlxmodels.export import save_model_dir
from mlxmodels.models import build_model

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 49152,  # the default model's tokenizer, so the directory is usable end to end
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}


def make_tiny_model(directory: Path, config: dict | None = None, tokenizer_from: Path | None = None) -> Path:
    """A random-weight model directory; with `tokenizer_from`, that model's tokenizer files too."""
    config = dict(config or TINY_LLAMA)
    mx.random.seed(0)
    model = build_model(config)
    weights = {k: mx.random.normal(v.shape) * 0.05 for k, v in tree_flatten(model.parameters())}
    save_model_dir(directory, config, weights, overwrite=True)
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (Path(tokenizer_from) / name).is_file():
                shutil.copy(Path(tokenizer_from) / name, directory / name)
    return directory


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def cpu_math_mode(value: str):
    """ORCHARD_CPU_MATH set to `value` for the block (for fixtures that cannot use monkeypatch)."""
    from metal_kernels.backend import environment_set

    return environment_set("ORCHARD_CPU_MATH", value)
