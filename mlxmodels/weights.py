"""Reading checkpoint tensors: safetensors files (single or sharded) checked before they are trusted.

`mx.load` memory-maps safetensors lazily, so a truncated file would only fail (or read garbage) at
the first evaluation. We read each file's JSON header ourselves first and check that every tensor's
byte range lies inside the file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlxmodels.errors import WeightsError

_HEADER_LIMIT = 100 * 1024 * 1024  # the safetensors format caps its header at 100 MB


def check_safetensors(path: Path) -> None:
    """Raise a one-line WeightsError if `path` is not a complete safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_HEADER_LIMIT, size - 8):
            raise WeightsError(f"{path}: not a safetensors file, or truncated (bad header length)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise WeightsError(f"{path}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header")
    data_size = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise WeightsError(f"{path}: corrupt safetensors header entry for '{name}'") from None
        if end > data_size or start > end:
            raise WeightsError(
                f"{path}: truncated: tensor '{name}' needs bytes up to {end}, the file holds {data_size}"
            )


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory, following a shard index when there is one."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise WeightsError(f"{index}: not a valid shard index (expected a 'weight_map' object)") from None
        files = [model_dir / s for s in shards]
        for f in files:
            if not f.is_file():
                raise WeightsError(f"{index}: lists shard '{f.name}', which is missing")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        other = [p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf")]
        hint = f" (found {', '.join(other)}: only safetensors are read from directories)" if other else ""
        raise WeightsError(f"{model_dir}: no *.safetensors weight files{hint}")
    return files


def read_weights(model_dir: Path) -> tuple[dict, dict]:
    """All tensors of a model directory, lazily loaded, and the file each one came from."""
    weights, origin = {}, {}
    for path in weight_files(model_dir):
        check_safetensors(path)
        try:
            tensors = mx.load(str(path))
        except Exception as e:  # mx.load raises bare RuntimeError/ValueError
            raise WeightsError(f"{path}: cannot read safetensors ({e})") from None
        for name, value in tensors.items():
            weights[name] = value
            origin[name] = path
    return weights, origin


def check_against_model(model, weights: dict, origin: dict, where: Path) -> None:
    """Every parameter present with the right shape, and nothing extra; errors name file and tensor."""
    expected = dict(tree_flatten(model.parameters()))
    missing = [k for k in expected if k not in weights]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsError(f"{where}: checkpoint lacks weight '{missing[0]}'{more}")
    for name, value in weights.items():
        source = origin.get(name, where)
        if name not in expected:
            raise WeightsError(f"{source}: unexpected tensor '{name}' (not part of this model's config)")
        if tuple(value.shape) != tuple(expected[name].shape):
            raise WeightsError(
                f"{source}: tensor '{name}' has shape {tuple(value.shape)}, "
                f"the config implies {tuple(expected[name].shape)}"
            )
