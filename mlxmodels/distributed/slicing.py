"""Cutting parameters into the parts a rank owns, reading only those parts from the checkpoint.

`mx.load` maps a safetensors file lazily, but evaluating any slice of one of its tensors reads the
whole tensor first. For a tensor the family's `sanitize` passed through unchanged (most of them), a
`Reader` instead reads the slice's own bytes from the file, so a rank never holds another rank's
part; a tensor that `sanitize` built (stacked experts, renamed fusions) is evaluated whole once,
sliced, copied and dropped, one tensor at a time. Either way each part is evaluated as soon as it is
cut, so the peak stays at the rank's share (plus, at most, one rebuilt tensor).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxmodels.errors import OrchardError

_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "U32": np.uint32, "I32": np.int32,
          "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "I64": np.int64, "F64": np.float64}


def ranges(total: int, parts: int, unit: int = 1, weights: list[float] | None = None) -> list[tuple[int, int]]:
    """`total` split into `parts` contiguous [start, stop) ranges on multiples of `unit`, in
    proportion to `weights` (even when None); the first ranges take any remainder."""
    if total % unit:
        raise ValueError(f"{total} is not a multiple of {unit}")
    units = total // unit
    if weights is None or min(weights) <= 0:
        weights = [1.0] * parts
    share = [units * w / sum(weights) for w in weights]
    counts = [int(s) for s in share]
    for i in sorted(range(parts), key=lambda i: (counts[i] - share[i], i))[: units - sum(counts)]:
        counts[i] += 1
    out, start = [], 0
    for c in counts:
        out.append((start * unit, (start + c) * unit))
        start += c
    return out


class Reader:
    """Materializes (slices of) the model's parameters; knows which ones are untouched file tensors."""

    def __init__(self, sources: dict | None = None):
        # id(array) -> (file, tensor name, array), for the arrays mx.load returned (see loading.assemble).
        self.sources = sources or {}
        self._headers: dict = {}
        self.bytes_read = 0
        self._made: list = []  # what take() returned (held, so their ids stay unique)

    def release(self) -> None:
        """Forget the parts handed out (the model holds them; later steps may replace them)."""
        self._made = []

    def _header(self, path: Path) -> tuple[dict, int]:
        if path not in self._headers:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                self._headers[path] = (json.loads(f.read(n)), 8 + n)
        return self._headers[path]

    def take(self, array: mx.array, axis: int | None = None, start: int = 0, stop: int | None = None) -> mx.array:
        """array[start:stop] along `axis` (the whole array for None), evaluated, in its own buffer."""
        source = self.sources.get(id(array))
        if source is not None and source[2] is array and source[0] is not None:
            part = self._read(source, array, axis, start, stop)
            if part is not None:
                return part
        if axis is not None:
            index = [slice(None)] * array.ndim
            index[axis] = slice(start, stop)
            array = mx.contiguous(array[tuple(index)])  # a copy: a view would keep the whole tensor alive
        mx.eval(array)
        self.bytes_read += array.nbytes
        self._made.append(array)
        return array

    def _read(self, source, array, axis, start, stop) -> mx.array | None:
        path, name, _ = source
        header, base = self._header(Path(path))
        entry = header.get(name)
        if entry is None or entry["dtype"] not in _NUMPY or list(entry["shape"]) != list(array.shape):
            return None
        begin, _ = entry["data_offsets"]
        data = np.memmap(path, dtype=_NUMPY[entry["dtype"]], mode="r", offset=base + begin,
                         shape=tuple(entry["shape"]) or (1,))
        if axis is not None:
            index = [slice(None)] * array.ndim
            index[axis] = slice(start, stop)
            data = data[tuple(index)]
        part = mx.array(np.ascontiguousarray(data)).reshape(data.shape if array.ndim else ())
        if entry["dtype"] == "BF16":
            part = part.view(mx.bfloat16)
        mx.eval(part)
        self.bytes_read += part.nbytes
        self._made.append(part)
        return part


def _quantized(layer) -> bool:
    return "scales" in layer


def slice_rows(layer: nn.Module, start: int, stop: int, reader: Reader) -> None:
    """Keep outputs [start, stop) of a (quantized) linear layer, rows of an embedding, or experts
    [start, stop) of stacked experts: axis 0 of every parameter."""
    for name in ("weight", "scales", "biases", "bias"):
        if name in layer:
            layer[name] = reader.take(layer[name], 0, start, stop)


def slice_inputs(layer: nn.Module, start: int, stop: int, reader: Reader, what: str) -> None:
    """Keep inputs [start, stop) of a (quantized) linear layer. A quantized layer's groups run along
    its inputs: a cut inside a group cannot be made (one-line error naming the layer)."""
    if _quantized(layer):
        gs = layer.group_size
        if start % gs or stop % gs:
            raise OrchardError(f"cannot shard {what}: its inputs {start}..{stop} would split a quantization "
                               f"group of {gs} (use fewer ranks or --parallel pipeline)")
        per_word = layer.weight.shape[-1] / (layer.scales.shape[-1] * gs)  # words per input
        layer["weight"] = reader.take(layer["weight"], -1, int(start * per_word), int(stop * per_word))
        layer["scales"] = reader.take(layer["scales"], -1, start // gs, stop // gs)
        if "biases" in layer:
            layer["biases"] = reader.take(layer["biases"], -1, start // gs, stop // gs)
    else:
        layer["weight"] = reader.take(layer["weight"], -1, start, stop)
    if "bias" in layer:
        layer["bias"] = reader.take(layer["bias"])


def drop_bias(layer: nn.Module) -> None:
    """Remove an output bias: after an all-reduce it must be added on one rank only."""
    if "bias" in layer:
        del layer["bias"]


def materialize_rest(model: nn.Module, reader: Reader) -> None:
    """Evaluate every parameter not cut above (the replicated ones), one at a time."""
    from mlx.utils import tree_flatten, tree_unflatten

    made = {id(a) for a in reader._made}
    updates = [(path, reader.take(value)) for path, value in tree_flatten(model.parameters())
               if id(value) not in made]
    if updates:
        model.update(tree_unflatten(updates), strict=False)
