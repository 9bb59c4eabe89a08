"""GGUF files: llama.cpp's single-file format, read into a Hugging Face style config and weights.

`mx.load` parses GGUF natively and keeps Q4_0 / Q4_1 / Q8_0 tensors quantized, as MLX affine
quantization with group size 32 (weight, scales, biases), so a Q4 file stays 4-bit in memory. This
module renames llama.cpp's tensors to Hugging Face names, undoes the Q/K row permutation that
llama.cpp's converter applies for its interleaved RoPE, and turns the metadata into a config dict
and a tokenizer.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxmodels.errors import ConfigError, WeightsError

SUPPORTED_ARCHITECTURES = ("llama",)

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
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


@dataclass
class GGUFModel:
    config: dict
    weights: dict
    metadata: dict
    tokenizer_metadata: dict


def _scalar(value):
    if isinstance(value, mx.array):
        return value.item() if value.size == 1 else np.array(value)
    return value


def _hf_name(name: str) -> str | None:
    base, _, kind = name.rpartition(".")  # kind: weight / scales / biases / bias
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{kind}"
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


def check_gguf(path: Path) -> None:
    """Walk the GGUF header with bounds checks before MLX parses it.

    MLX's parser trusts the file (a garbage header can crash the process), so we check the magic,
    the version, every metadata entry and every tensor's byte range against the file size first.
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

        def skip_string() -> bytes:
            nonlocal pos
            n = take("<Q")
            if pos + n > size:
                bad("truncated header")
            pos += n
            return m[pos - n : pos]

        def skip_value(kind: int, depth: int = 0):
            nonlocal pos
            if kind in _SCALAR_SIZES:
                if pos + _SCALAR_SIZES[kind] > size:
                    bad("truncated header")
                pos += _SCALAR_SIZES[kind]
            elif kind == 8:
                skip_string()
            elif kind == 9 and depth == 0:
                item, count = take("<I"), take("<Q")
                if item in _SCALAR_SIZES:
                    pos += _SCALAR_SIZES[item] * count
                    if pos > size:
                        bad("truncated header")
                else:
                    for _ in range(count):
                        skip_value(item, depth + 1)
            else:
                bad(f"unknown metadata value type {kind}")

        if m[:4] != b"GGUF":
            bad("no GGUF magic number")
        pos = 4
        version = take("<I")
        if version not in (2, 3):
            bad(f"unsupported GGUF version {version}")
        tensor_count, kv_count = take("<Q"), take("<Q")
        alignment = 32
        for _ in range(kv_count):
            key = skip_string()
            kind = take("<I")
            if key == b"general.alignment" and kind == 4:
                alignment = struct.unpack_from("<I", m, pos)[0]
            skip_value(kind)
        tensors = []
        for _ in range(tensor_count):
            name = skip_string().decode("utf-8", "replace")
            n_dims = take("<I")
            if n_dims > 4:
                bad(f"tensor '{name}' has {n_dims} dimensions")
            dims = [take("<Q") for _ in range(n_dims)]
            ggml_type, offset = take("<I"), take("<Q")
            tensors.append((name, dims, ggml_type, offset))
        data_start = (pos + alignment - 1) // alignment * alignment
        for name, dims, ggml_type, offset in tensors:
            try:
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError):
                bad(f"tensor '{name}' has unknown type {ggml_type}")
            count = 1
            for d in dims:
                count *= d
            if data_start + offset + count // block * block_bytes > size:
                bad(f"tensor '{name}' extends past the end of the file")


def read_gguf(path: Path) -> GGUFModel:
    check_gguf(path)
    try:
        tensors, metadata = mx.load(str(path), return_metadata=True)
    except Exception as e:
        raise WeightsError(f"{path}: corrupt or truncated GGUF file ({e})") from None
    meta = {k: _scalar(v) for k, v in metadata.items()}
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"{path}: unsupported GGUF architecture '{arch}' (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    config = _llama_config(path, meta, tensors)
    weights = {}
    for name, value in tensors.items():
        hf = _hf_name(name)
        if hf is None:
            if name == "rope_freqs.weight":
                continue  # folded into the config's rope parameters
            raise WeightsError(f"{path}: unexpected GGUF tensor '{name}' for architecture '{arch}'")
        if ".self_attn.q_proj." in hf:
            value = _unpermute_rows(value, config["num_attention_heads"])
        elif ".self_attn.k_proj." in hf:
            value = _unpermute_rows(value, config["num_key_value_heads"])
        weights[hf] = value
    config["quantization"] = _quantization_layout(weights)
    if config["quantization"] is None:
        del config["quantization"]
    tokenizer_metadata = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    return GGUFModel(config=config, weights=weights, metadata=meta, tokenizer_metadata=tokenizer_metadata)


def _llama_config(path: Path, meta: dict, tensors: dict) -> dict:
    def need(key):
        value = meta.get(f"llama.{key}")
        if value is None:
            raise ConfigError(f"{path}: GGUF metadata lacks 'llama.{key}'")
        return value

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    vocab = len(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta else int(need("vocab_size"))
    config = {
        "_source": str(path),
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(meta.get("llama.attention.key_length", meta.get("llama.rope.dimension_count", hidden // heads))),
        "rms_norm_eps": float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta.get("llama.context_length", 4096)),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensors,
        "torch_dtype": "float16",
    }
    for key in ("bos_token_id", "eos_token_id"):
        if f"tokenizer.ggml.{key}" in meta:
            config[key] = int(meta[f"tokenizer.ggml.{key}"])
    scaling = meta.get("llama.rope.scaling.type")
    if scaling in ("linear", "yarn"):
        config["rope_scaling"] = {"rope_type": scaling, "factor": float(meta["llama.rope.scaling.factor"])}
        if "llama.rope.scaling.original_context_length" in meta:
            config["rope_scaling"]["original_max_position_embeddings"] = int(
                meta["llama.rope.scaling.original_context_length"]
            )
    if "rope_freqs.weight" in tensors:
        # Llama 3.1 GGUFs store the llama3 scaling as per-frequency divisors instead of parameters.
        factors = np.array(tensors["rope_freqs.weight"].astype(mx.float32)).tolist()
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
