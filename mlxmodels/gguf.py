"""GGUF files: llama.cpp's single-file format, read into a Hugging Face style config and weights.

Two readers share the naming and config code (`gguf_arch.py`):
- `mx.load` parses GGUF natively and keeps Q4_0 / Q4_1 / Q8_0 tensors quantized, as MLX affine
  quantization with group size 32 (weight, scales, biases), so a Q4 file stays 4-bit in memory.
  `read_gguf` uses it when every tensor is of such a type.
- `GGUFSource` reads any file tensor by tensor through a numpy memory map: quantized tensors become
  MLX quantized arrays (`gguf_quants.py`: exact for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/IQ4_NL/IQ4_XS,
  requantized for the others), F16/F32/BF16 stay floats. The converter streams from it; `read_gguf`
  uses it for files MLX cannot read (e.g. Q4_K_M mixes).

Both rename llama.cpp's tensors to Hugging Face names, undo the Q/K row permutation that llama.cpp's
converter applies to Llama for its interleaved RoPE, undo the +1 it folds into Gemma's norm weights,
and turn the metadata into a config dict and a tokenizer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxmodels.errors import WeightsError
from mlxmodels.gguf_arch import CONFIG_TENSORS, SUPPORTED_ARCHITECTURES, check_architecture, hf_name, model_config
from mlxmodels.gguf_quants import EXACT, FLOAT_TYPES, mlx_bits, repack

__all__ = ["SUPPORTED_ARCHITECTURES", "GGUFModel", "GGUFSource", "check_gguf", "read_gguf"]
# ggml types `mx.load` reads (and keeps quantized); files with others go through GGUFSource.
NATIVE_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")


@dataclass
class GGUFModel:
    config: dict
    weights: dict
    metadata: dict
    tokenizer_metadata: dict


def _hf_name(name: str, arch: str = "llama") -> str | None:
    return hf_name(name, arch)


def _unpermute_rows(w: mx.array, heads: int) -> mx.array:
    """Invert llama.cpp's Q/K permutation: per head, rows (pair, half) -> (half, pair).

    Quantization groups run along the input dimension, so the same row reordering applies to the
    packed weights, the scales and the biases alike.
    """
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Sizes in bytes of each GGUF metadata value type (8: string and 9: array are variable).
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


_SCALAR_FORMATS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8",
                   11: "<i8", 12: "<f8"}


@dataclass
class TensorInfo:
    name: str
    dims: list  # ggml order: innermost (row length) first
    ggml_type: int
    offset: int  # absolute, in the file
    nbytes: int
    kind: str = ""  # the ggml type's name, e.g. "Q4_K"


def check_gguf(path: Path) -> tuple[dict, list]:
    """Walk the GGUF header with bounds checks; return its metadata and tensor table.

    MLX's parser trusts the file (a garbage header can crash the process), so we check the magic,
    the version, every metadata entry and every tensor's byte range against the file size first.
    Numeric metadata arrays come back as numpy arrays, strings as str (as `mx.load` gave them).
    """
    import mmap

    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    def bad(why: str):
        raise WeightsError(f"{path}: corrupt or truncated GGUF file ({why})")

    size = path.stat().st_size
    if size < 24:
        bad("too short")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            n = struct.calcsize(fmt)
            if pos + n > size:
                bad("truncated header")
            value = struct.unpack_from(fmt, m, pos)
            pos += n
            return value if len(value) > 1 else value[0]

        def read_string() -> bytes:
            nonlocal pos
            n = take("<Q")
            if pos + n > size:
                bad("truncated header")
            pos += n
            return m[pos - n : pos]

        def read_value(kind: int, depth: int = 0):
            nonlocal pos
            if kind in _SCALAR_SIZES:
                if pos + _SCALAR_SIZES[kind] > size:
                    bad("truncated header")
                value = np.frombuffer(m, dtype=_SCALAR_FORMATS[kind], count=1, offset=pos)[0].item()
                pos += _SCALAR_SIZES[kind]
                return value
            if kind == 8:
                return read_string().decode("utf-8", "replace")
            if kind == 9 and depth == 0:
                item, count = take("<I"), take("<Q")
                if item in _SCALAR_SIZES:
                    end = pos + _SCALAR_SIZES[item] * count
                    if end > size:
                        bad("truncated header")
                    value = np.frombuffer(m, dtype=_SCALAR_FORMATS[item], count=count, offset=pos).copy()
                    pos = end
                    return value
                return [read_value(item, depth + 1) for _ in range(count)]
            bad(f"unknown metadata value type {kind}")

        if m[:4] != b"GGUF":
            bad("no GGUF magic number")
        pos = 4
        version = take("<I")
        if version not in (2, 3):
            bad(f"unsupported GGUF version {version}")
        tensor_count, kv_count = take("<Q"), take("<Q")
        metadata = {}
        for _ in range(kv_count):
            key = read_string().decode("utf-8", "replace")
            metadata[key] = read_value(take("<I"))
        alignment = metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0:
            bad(f"bad general.alignment {alignment!r}")
        tensors = []
        for _ in range(tensor_count):
            name = read_string().decode("utf-8", "replace")
            n_dims = take("<I")
            if n_dims > 4:
                bad(f"tensor '{name}' has {n_dims} dimensions")
            dims = [take("<Q") for _ in range(n_dims)]
            ggml_type, offset = take("<I"), take("<Q")
            tensors.append(TensorInfo(name, dims, ggml_type, offset, 0))
        data_start = (pos + alignment - 1) // alignment * alignment
        for t in tensors:
            try:
                t.kind = GGMLQuantizationType(t.ggml_type).name
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
            except (ValueError, KeyError):
                bad(f"tensor '{t.name}' has unknown type {t.ggml_type}")
            if t.dims and t.dims[0] % block:
                bad(f"tensor '{t.name}' has rows of {t.dims[0]} values, not a multiple of {t.kind}'s block of {block}")
            count = 1
            for d in t.dims:
                count *= d
            t.offset += data_start
            t.nbytes = count // block * block_bytes
            if t.offset + t.nbytes > size:
                bad(f"tensor '{t.name}' extends past the end of the file")
    return metadata, tensors


class GGUFSource:
    """A GGUF file read one tensor at a time through a memory map: the converter's GGUF input.

    `config`, `metadata`, `tokenizer_metadata` describe the model; `names` lists the Hugging Face
    names of its (module) tensors; `load(name)` returns that tensor as MLX arrays: `{name: w}` for
    float tensors, or `{module.weight, module.scales, module.biases}` for quantized ones.
    """

    def __init__(self, path: Path):
        self.path = path = Path(path)
        metadata, tensors = check_gguf(path)
        self.metadata = metadata
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        self.arch = arch = self.metadata.get("general.architecture")
        check_architecture(path, arch)
        self._tensors = {t.name: t for t in tensors}
        self.config = model_config(path, arch, self.metadata, set(self._tensors), self._small_tensor)
        self._by_hf = {}
        for name in self._tensors:
            hf = hf_name(name, arch)
            if hf is None:
                if name in CONFIG_TENSORS:
                    continue  # folded into the config's RoPE settings
                raise WeightsError(f"{path}: unexpected GGUF tensor '{name}' for architecture '{arch}'")
            self._by_hf[hf] = name
        self.names = list(self._by_hf)
        self.tokenizer_metadata = {k: v for k, v in self.metadata.items() if k.startswith("tokenizer.")}

    def tensor_types(self) -> dict[str, int]:
        counts = {}
        for t in self._tensors.values():
            counts[t.kind] = counts.get(t.kind, 0) + 1
        return counts

    def all_native(self) -> bool:
        return all(kind in NATIVE_TYPES for kind in self.tensor_types())

    def nbytes(self, name: str) -> int:
        return self._tensors[self._by_hf[name]].nbytes

    def kind(self, name: str) -> str:
        """The ggml type of the tensor `name` (a Hugging Face name), e.g. "Q4_K"."""
        return self._tensors[self._by_hf[name]].kind

    def _raw(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes: float types typed and shaped, others uint8 rows of blocks."""
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        raw = self._map[t.offset : t.offset + t.nbytes]
        shape = list(reversed(t.dims))
        if t.kind in ("F32", "F16"):
            return raw.view(np.float32 if t.kind == "F32" else np.float16).reshape(shape)
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[t.kind]]
        return raw.reshape(*shape[:-1], shape[-1] // block * block_bytes)

    def _small_tensor(self, name: str) -> np.ndarray:
        """A small tensor (RoPE factors) as float numpy values."""
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize

        t = self._tensors[name]
        return np.asarray(dequantize(self._raw(t), GGMLQuantizationType[t.kind]), dtype=np.float64)

    def load(self, name: str, dtype: mx.Dtype | None = None, requantize: bool = True) -> dict:
        """The tensor `name` (see the class docstring). Types with no exact MLX layout are requantized
        (`gguf_quants.REQUANTIZED`), or with `requantize=False` dequantized exactly to `dtype`
        (float32 by default), as are BF16 and F64."""
        t = self._tensors[self._by_hf[name]]
        try:
            out = self._load(t, name, dtype, requantize)
        except NotImplementedError:  # a type the gguf package cannot dequantize
            raise WeightsError(f"{self.path}: GGUF tensor '{t.name}' has unsupported type {t.kind}") from None
        return {k: _fix_up(k, v, self.arch, self.config) for k, v in out.items()}

    def _load(self, t: TensorInfo, name: str, dtype: mx.Dtype | None, requantize: bool) -> dict:
        data = self._raw(t)
        if t.kind in ("F32", "F16"):
            return {name: mx.array(np.asarray(data))}
        if t.kind == "BF16":
            return {name: mx.array(np.ascontiguousarray(data).view(np.uint16)).view(mx.bfloat16)}
        if mlx_bits(t.kind) is None and t.kind not in FLOAT_TYPES:
            raise WeightsError(f"{self.path}: GGUF tensor '{t.name}' has unsupported type {t.kind}")
        if t.kind in EXACT or (requantize and t.kind not in FLOAT_TYPES):
            module = name.rpartition(".")[0]
            weight, scales, biases, _ = repack(data, t.kind)
            return {f"{module}.weight": weight, f"{module}.scales": scales, f"{module}.biases": biases}
        return {name: _dequantized(data, t.kind, dtype or mx.float32)}


def _dequantized(data: np.ndarray, kind: str, dtype: mx.Dtype) -> mx.array:
    """The `gguf` package's exact float32 values, a block of rows at a time (no float32 copy of a
    large tensor is held when a narrower dtype is asked for)."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    rows = data.reshape(-1, data.shape[-1])
    step = max(1, (1 << 22) // max(1, data.shape[-1]))
    parts = []
    for i in range(0, rows.shape[0], step):
        part = mx.array(dequantize(rows[i : i + step], GGMLQuantizationType[kind])).astype(dtype)
        mx.eval(part)
        parts.append(part)
    value = mx.concatenate(parts) if len(parts) > 1 else parts[0]
    return value.reshape(*data.shape[:-1], value.shape[-1])


def _fix_up(hf: str, value: mx.array, arch: str, config: dict) -> mx.array:
    """Undo what llama.cpp's converter did to a tensor (see the module docstring)."""
    if arch == "llama":
        if ".self_attn.q_proj." in hf:
            return _unpermute_rows(value, config["num_attention_heads"])
        if ".self_attn.k_proj." in hf:
            return _unpermute_rows(value, config["num_key_value_heads"])
    elif arch in ("gemma2", "gemma3") and hf.endswith("norm.weight"):
        return value - 1  # Gemma norms scale by (1 + w); llama.cpp stores 1 + w
    return value


def read_gguf(path: Path, requantize: bool = True) -> GGUFModel:
    """The whole model in memory, quantized tensors as MLX quantized arrays (see `gguf_quants`);
    `requantize=False`: types with no exact MLX layout come as their exact float32 values instead."""
    source = GGUFSource(path)
    weights = {}
    if source.all_native():
        try:
            tensors = mx.load(str(path))
        except Exception as e:
            raise WeightsError(f"{path}: corrupt or truncated GGUF file ({e})") from None
        for name, value in tensors.items():
            hf = _hf_name(name, source.arch)
            if hf is not None:
                weights[hf] = _fix_up(hf, value, source.arch, source.config)
    else:
        for name in source.names:
            weights.update(source.load(name, requantize=requantize))
    config = dict(source.config)
    config["quantization"] = _quantization_layout(weights)
    if config["quantization"] is None:
        del config["quantization"]
    return GGUFModel(config=config, weights=weights, metadata=source.metadata,
                     tokenizer_metadata=source.tokenizer_metadata)


def _quantization_layout(weights: dict) -> dict | None:
    """MLX `quantization` config for the quantized tensors (GGUF types may differ per tensor)."""
    layouts = {}
    for name, value in weights.items():
        if name.endswith(".scales"):
            module = name[: -len(".scales")]
            packed = weights[f"{module}.weight"]
            group_size = 32  # every GGUF type becomes groups of 32 (gguf_quants.GROUP_SIZE)
            bits = packed.shape[-1] * 32 // (value.shape[-1] * group_size)
            layouts[module] = {"group_size": group_size, "bits": bits}
    if not layouts:
        return None
    counts = {}
    for layout in layouts.values():
        counts[layout["bits"]] = counts.get(layout["bits"], 0) + 1
    common_bits = max(counts, key=counts.get)
    q = {"group_size": 32, "bits": common_bits}
    for module, layout in sorted(layouts.items()):
        if layout["bits"] != common_bits:
            q[module] = layout
    return q
