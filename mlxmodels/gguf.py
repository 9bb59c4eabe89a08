"""GGUF files: llama.cpp's single-file format, read into a Hugging Face style config and weights.

Two readers share the naming and config code:
- `mx.load` parses GGUF natively and keeps Q4_0 / Q4_1 / Q8_0 tensors quantized, as MLX affine
  quantization with group size 32 (weight, scales, biases), so a Q4 file stays 4-bit in memory.
  `read_gguf` uses it when every tensor is of such a type.
- `GGUFSource` reads any file tensor by tensor through the `gguf` package's memory map: those three
  types are repacked into the same MLX layout (exactly, no re-rounding), every other type (K-quants
  Q2_K…Q6_K, F16, BF16, …) is dequantized to float32 with the package's vectorised numpy code. The
  converter streams from it; `read_gguf` uses it for files MLX cannot read (e.g. Q4_K_M mixes).

Both rename llama.cpp's tensors to Hugging Face names, undo the Q/K row permutation that llama.cpp's
converter applies to Llama for its interleaved RoPE, undo the +1 it folds into Gemma's norm weights,
and turn the metadata into a config dict and a tokenizer.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxmodels.errors import ConfigError, WeightsError

SUPPORTED_ARCHITECTURES = ("llama", "gemma3")
# ggml types MLX keeps quantized (and `mx.load` reads); everything else is dequantized.
NATIVE_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma 3 adds per-head q/k norms and a norm after attention and after the MLP.
_GEMMA3_LAYER_NAMES = {
    **{k: v for k, v in _LAYER_NAMES.items() if k != "ffn_norm"},
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


@dataclass
class GGUFModel:
    config: dict
    weights: dict
    metadata: dict
    tokenizer_metadata: dict


def _hf_name(name: str, arch: str = "llama") -> str | None:
    base, _, kind = name.rpartition(".")  # kind: weight / scales / biases / bias
    layer_names = _GEMMA3_LAYER_NAMES if arch == "gemma3" else _LAYER_NAMES
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in layer_names:
        return f"model.layers.{m.group(1)}.{layer_names[m.group(2)]}.{kind}"
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{kind}"
    return None


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
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
            except (ValueError, KeyError):
                bad(f"tensor '{t.name}' has unknown type {t.ggml_type}")
            count = 1
            for d in t.dims:
                count *= d
            t.offset += data_start
            t.nbytes = count // block * block_bytes
            if t.offset + t.nbytes > size:
                bad(f"tensor '{t.name}' extends past the end of the file")
    return metadata, tensors


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """MLX's packing: element i of each run of 32/bits values sits at bit offset bits * i of a uint32."""
    if bits == 8:  # four bytes in a word, little-endian: a plain reinterpretation (x86 and Apple Silicon)
        return np.ascontiguousarray(q, dtype=np.uint8).view("<u4")
    per_word = 32 // bits
    q = q.astype(np.uint32).reshape(*q.shape[:-1], q.shape[-1] // per_word, per_word)
    shifts = (bits * np.arange(per_word, dtype=np.uint32))
    return np.bitwise_or.reduce(q << shifts, axis=-1)


def _repack_native(data: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_0 / Q4_1 / Q8_0 blocks of 32 -> MLX affine (packed weight, scales, biases), exactly.

    Each block is value = d * q + m with one (d, m) per 32 inputs, which is MLX's affine layout with
    group size 32; only the storage differs (ggml puts elements j and j + 16 in one byte).
    """
    rows = data.shape[0]
    block_bytes = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[kind]
    blocks = np.ascontiguousarray(data).reshape(rows, -1, block_bytes)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    if kind == "Q8_0":
        q = (blocks[..., 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        bias, bits = d * np.float16(-128), 8
    else:
        start = 2 if kind == "Q4_0" else 4
        qs = blocks[..., start : start + 16]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        bias = d * np.float16(-8) if kind == "Q4_0" else blocks[..., 2:4].copy().view(np.float16)[..., 0]
        bits = 4
    return _pack(q.reshape(rows, -1), bits), d, bias


class GGUFSource:
    """A GGUF file read one tensor at a time through a memory map: the converter's GGUF input.

    `config`, `metadata`, `tokenizer_metadata` describe the model; `names` lists the Hugging Face
    names of its (module) tensors; `load(name)` returns that tensor as MLX arrays: `{name: w}` for
    float tensors, or `{module.weight, module.scales, module.biases}` for natively quantized ones.
    """

    def __init__(self, path: Path):
        self.path = path = Path(path)
        metadata, tensors = check_gguf(path)
        self.metadata = metadata
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        self.arch = arch = self.metadata.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"{path}: unsupported GGUF architecture '{arch}' (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        self._tensors = {t.name: t for t in tensors}
        self.config = _model_config(path, arch, self.metadata, set(self._tensors), self._rope_freqs)
        self._by_hf = {}
        for name in self._tensors:
            hf = _hf_name(name, arch)
            if hf is None:
                if name == "rope_freqs.weight":
                    continue  # folded into the config's rope parameters
                raise WeightsError(f"{path}: unexpected GGUF tensor '{name}' for architecture '{arch}'")
            self._by_hf[hf] = name
        self.names = list(self._by_hf)
        self.tokenizer_metadata = {k: v for k, v in self.metadata.items() if k.startswith("tokenizer.")}

    def tensor_types(self) -> dict[str, int]:
        from gguf.constants import GGMLQuantizationType

        counts = {}
        for t in self._tensors.values():
            kind = GGMLQuantizationType(t.ggml_type).name
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def all_native(self) -> bool:
        return all(kind in NATIVE_TYPES for kind in self.tensor_types())

    def nbytes(self, name: str) -> int:
        return self._tensors[self._by_hf[name]].nbytes

    def _raw(self, t: TensorInfo):
        """The tensor's bytes as (type, array): float types typed and shaped, others uint8 rows of blocks."""
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        kind = GGMLQuantizationType(t.ggml_type)
        raw = self._map[t.offset : t.offset + t.nbytes]
        shape = list(reversed(t.dims))
        if kind.name in ("F32", "F16"):
            return kind, raw.view(np.float32 if kind.name == "F32" else np.float16).reshape(shape)
        block, block_bytes = GGML_QUANT_SIZES[kind]
        return kind, raw.reshape(*shape[:-1], shape[-1] // block * block_bytes)

    def _rope_freqs(self) -> mx.array:
        from gguf.quants import dequantize

        kind, data = self._raw(self._tensors["rope_freqs.weight"])
        return mx.array(dequantize(data, kind))

    def load(self, name: str, dtype: mx.Dtype | None = None) -> dict:
        """The tensor `name` (see the class docstring); dequantized types come back as `dtype`
        (float32 by default), produced a block of rows at a time so no float32 copy of a large
        tensor is ever held when a narrower dtype is asked for."""
        from gguf.quants import dequantize

        t = self._tensors[self._by_hf[name]]
        kind, data = self._raw(t)
        try:
            if kind.name in ("Q4_0", "Q4_1", "Q8_0"):
                module = name.rpartition(".")[0]
                w, scales, biases = _repack_native(data, kind.name)
                out = {f"{module}.weight": mx.array(w), f"{module}.scales": mx.array(scales),
                       f"{module}.biases": mx.array(biases)}
            elif kind.name in ("F32", "F16"):
                out = {name: mx.array(np.asarray(data))}
            else:
                rows = data.reshape(-1, data.shape[-1])
                step = max(1, (1 << 22) // max(1, data.shape[-1]))
                parts = []
                for i in range(0, rows.shape[0], step):
                    part = mx.array(dequantize(rows[i : i + step], kind)).astype(dtype or mx.float32)
                    mx.eval(part)
                    parts.append(part)
                value = mx.concatenate(parts) if len(parts) > 1 else parts[0]
                out = {name: value.reshape(*data.shape[:-1], value.shape[-1])}
        except NotImplementedError:
            raise WeightsError(f"{self.path}: GGUF tensor '{t.name}' has unsupported type {kind.name}") from None
        return {k: _fix_up(k, v, self.arch, self.config) for k, v in out.items()}


def _fix_up(hf: str, value: mx.array, arch: str, config: dict) -> mx.array:
    """Undo what llama.cpp's converter did to a tensor (see the module docstring)."""
    if arch == "llama":
        if ".self_attn.q_proj." in hf:
            return _unpermute_rows(value, config["num_attention_heads"])
        if ".self_attn.k_proj." in hf:
            return _unpermute_rows(value, config["num_key_value_heads"])
    elif arch == "gemma3" and hf.endswith("norm.weight"):
        return value - 1  # Gemma norms scale by (1 + w); llama.cpp stores 1 + w
    return value


def read_gguf(path: Path) -> GGUFModel:
    """The whole model in memory: natively quantized files stay quantized, others are dequantized."""
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
            weights.update(source.load(name))
    config = dict(source.config)
    config["quantization"] = _quantization_layout(weights)
    if config["quantization"] is None:
        del config["quantization"]
    return GGUFModel(config=config, weights=weights, metadata=source.metadata,
                     tokenizer_metadata=source.tokenizer_metadata)


def _model_config(path: Path, arch: str, meta: dict, tensor_names: set, rope_freqs) -> dict:
    """A Hugging Face (4.x dialect) config from the GGUF metadata of a supported architecture."""

    def need(key):
        value = meta.get(f"{arch}.{key}")
        if value is None:
            raise ConfigError(f"{path}: GGUF metadata lacks '{arch}.{key}'")
        return value

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    layers = int(need("block_count"))
    vocab = len(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta else int(need("vocab_size"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", meta.get(f"{arch}.rope.dimension_count", hidden // heads)))
    config = {
        "_source": str(path),
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5 if arch == "llama" else 1e-6)),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta.get(f"{arch}.context_length", 4096)),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float16",
    }
    if arch == "llama":
        config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    else:
        # Settings llama.cpp hard-codes for Gemma 3 rather than storing: local layers use base 10000,
        # every 6th layer is global, and attention is scaled by head_dim (hidden/heads for the 27B).
        config.update(
            model_type="gemma3_text",
            architectures=["Gemma3ForCausalLM"],
            hidden_activation="gelu_pytorch_tanh",
            rope_local_base_freq=10000.0,
            sliding_window_pattern=6,
            sliding_window=int(meta.get("gemma3.attention.sliding_window", 512)),
            query_pre_attn_scalar=hidden // heads if layers == 62 else head_dim,
        )
        if meta.get("gemma3.final_logit_softcapping") is not None:
            config["final_logit_softcapping"] = float(meta["gemma3.final_logit_softcapping"])
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        if f"tokenizer.ggml.{key}" in meta:
            config[key.replace("padding", "pad")] = int(meta[f"tokenizer.ggml.{key}"])
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling in ("linear", "yarn"):
        config["rope_scaling"] = {"rope_type": scaling, "factor": float(meta[f"{arch}.rope.scaling.factor"])}
        if f"{arch}.rope.scaling.original_context_length" in meta:
            config["rope_scaling"]["original_max_position_embeddings"] = int(
                meta[f"{arch}.rope.scaling.original_context_length"]
            )
    if "rope_freqs.weight" in tensor_names:
        # Llama 3.1 GGUFs store the llama3 scaling as per-frequency divisors instead of parameters.
        factors = np.array(rope_freqs().astype(mx.float32)).tolist()
        config["rope_scaling"] = {"rope_type": "frequency_factors", "factors": factors}
    return config


def _quantization_layout(weights: dict) -> dict | None:
    """MLX `quantization` config for the quantized tensors (GGUF types may differ per tensor)."""
    layouts = {}
    for name, value in weights.items():
        if name.endswith(".scales"):
            module = name[: -len(".scales")]
            packed = weights[f"{module}.weight"]
            group_size = 32  # all of MLX's GGUF quant types (Q4_0, Q4_1, Q8_0) use blocks of 32
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
