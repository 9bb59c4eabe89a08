"""Writing an MLX model directory (config.json, safetensors shards + index, tokenizer files).

The directory is written under a temporary name beside its destination and renamed into place at
the end, so an interrupted write never leaves a half model where a model is expected.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx

MAX_SHARD_BYTES = 5 * 1024**3


@contextmanager
def atomic_directory(out: Path, overwrite: bool = False):
    """Yield a temporary directory that becomes `out` when the block finishes without error."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            if not overwrite:
                raise FileExistsError(f"{out}: already exists")
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def shard(weights: dict, max_bytes: int = MAX_SHARD_BYTES) -> list[dict]:
    shards, current, size = [], {}, 0
    for name, value in weights.items():
        if current and size + value.nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = value
        size += value.nbytes
    shards.append(current)
    return shards


def write_weights(directory: Path, weights: dict, max_bytes: int = MAX_SHARD_BYTES) -> None:
    shards = shard(weights, max_bytes)
    if len(shards) == 1:
        mx.save_safetensors(str(directory / "model.safetensors"), shards[0], metadata={"format": "mlx"})
        return
    weight_map = {}
    for i, part in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(directory / name), part, metadata={"format": "mlx"})
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def public_config(config: dict) -> dict:
    """The config as written to disk: our private bookkeeping keys (leading underscore) removed."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def save_model_dir(out: Path, config: dict, weights: dict, hf_tokenizer=None, overwrite: bool = False) -> Path:
    with atomic_directory(out, overwrite) as tmp:
        write_weights(tmp, weights)
        (tmp / "config.json").write_text(json.dumps(public_config(config), indent=2))
        if hf_tokenizer is not None:
            hf_tokenizer.save_pretrained(str(tmp))
    return Path(out)
