"""ggml's quantized blocks as MLX quantized arrays, so a quantized GGUF stays quantized in memory.

MLX's affine quantization keeps, per group of 32 consecutive inputs of a row, a scale and a bias:
value = scale * q + bias, with q an unsigned `bits`-bit integer (bits 2, 3, 4, 5, 6 or 8). Where a
ggml type is that layout with other storage, it is repacked exactly; where it is not, it is mapped to
the nearest such layout, with the error stated below.

| ggml type | its block | MLX layout | how |
|---|---|---|---|
| Q4_0, Q4_1 | 32: d (and m) fp16, 4-bit q | 4-bit | exact: scale d, bias -8d (Q4_0) or m |
| Q5_0, Q5_1 | 32: d (and m) fp16, 5-bit q | 5-bit | exact: scale d, bias -16d or m |
| Q8_0 | 32: d fp16, int8 q | 8-bit | exact: q + 128, bias -128d |
| Q4_K, Q5_K | 256 = 8 x 32: d, dmin fp16; 6-bit scale sc and min m per 32 | 4 / 5-bit | exact: scale d*sc, bias -dmin*m |
| IQ4_NL, IQ4_XS | 32: d (IQ4_XS: x a 6-bit scale); 16 integer levels in [-127, 113] | 8-bit | exact: level + 127, bias -127 scale |
| Q6_K, Q3_K | 256 = 16 x 16: d; an int8 / 6-bit scale per 16; q symmetric | 8 / 5-bit | paired: see `_paired` |
| Q2_K, IQ3_*, IQ2_*, IQ1_*, TQ*, MXFP4, NVFP4 | sub-blocks of 16, codebooks, other grids | `REQUANTIZED` | each group of 32 spans its range: error at most half a step |

Scales and biases are float32: every product above is exact there (d * sc needs 17 bits, fp16 has 11),
and it is what the CPU computes in. Exact means `mx.dequantize` equals the `gguf` package's
dequantization bit for bit (tests/test_gguf_quants.py).

What the non-exact layouts cost, measured on SmolLM2-135M quantized by llama.cpp (llama_model_quantize,
pure) from a float32 copy of its Q4_1 file, 128 calibration tokens: relative RMS error of a tensor
added by the mapping vs the type's own error, and the mean KL divergence it adds vs the type's own:

| type | MLX bits | tensor error: mapping / type's own | KL nats/token: mapping / type's own |
|---|---|---|---|
| Q6_K | 8 | 0.0039 / 0.018 | 0.0004 / 0.016 |
| Q3_K | 5 | 0.029 / 0.154 | 0.015 / 0.81 |
| Q3_K at 4 bits | (4) | 0.059 / 0.154 | 0.048 / 0.81 |
| Q2_K | 4 | 0.064 / 0.305 | 0.16 / 3.17 |
| IQ3_S | 5 | 0.040 / 0.170 | 0.099 / 1.83 |

So each type gets the fewest bits whose added error stays near a fifth of the type's own (or less).
Gemma 3 270M Q4_K_M as loaded (Q6_K the only mapped type) against its exact values: KL 0.0005.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

GROUP_SIZE = 32  # every layout here: ggml's blocks and sub-blocks are 32 (or 16) inputs long

# Exactly representable types -> their MLX bits.
EXACT = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q4_K": 4, "Q5_K": 5, "IQ4_NL": 8, "IQ4_XS": 8}

# Types with no exact MLX layout -> MLX bits (the measurements above; IQ2 / IQ1, which llama.cpp
# makes only with an importance matrix, and the ternary / FP4 types are sized like their neighbours).
REQUANTIZED = {
    "Q6_K": 8, "Q3_K": 5, "Q2_K": 4,
    "IQ3_S": 5, "IQ3_XXS": 5, "IQ2_S": 4, "IQ2_XS": 4, "IQ2_XXS": 4,
    "IQ1_S": 3, "IQ1_M": 3, "TQ1_0": 4, "TQ2_0": 4, "MXFP4": 6, "NVFP4": 6,
}
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")
# Bits per value each type stores (its level, as in "a Q4_K_M file"), whatever MLX layout it becomes.
NOMINAL_BITS = {
    "Q1_0": 1, "IQ1_S": 1, "IQ1_M": 1, "TQ1_0": 2, "TQ2_0": 2, "Q2_K": 2, "IQ2_XXS": 2, "IQ2_XS": 2, "IQ2_S": 2,
    "Q3_K": 3, "IQ3_XXS": 3, "IQ3_S": 3, "Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "IQ4_NL": 4, "IQ4_XS": 4, "MXFP4": 4,
    "NVFP4": 4, "Q5_0": 5, "Q5_1": 5, "Q5_K": 5, "Q6_K": 6, "Q8_0": 8, "Q8_1": 8, "Q8_K": 8,
}


def mlx_bits(kind: str) -> int | None:
    """The MLX bits a ggml type becomes; None for float types (kept as floats)."""
    return EXACT.get(kind) or REQUANTIZED.get(kind)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """MLX's packing of `bits`-bit codes [..., n] into uint32 words [..., n * bits / 32]: a
    little-endian bit stream, code i at bits [bits * i, bits * (i + 1)). Eight codes fill exactly
    `bits` bytes, so each run of eight is combined in a uint64 and its low `bits` bytes kept."""
    if bits == 8:
        return np.ascontiguousarray(q, dtype=np.uint8).view("<u4")
    runs = q.astype(np.uint64).reshape(*q.shape[:-1], q.shape[-1] // 8, 8)
    shifts = np.uint64(bits) * np.arange(8, dtype=np.uint64)
    word = np.bitwise_or.reduce(runs << shifts, axis=-1)
    packed = word[..., None].view(np.uint8)[..., :bits]  # little-endian machines (x86, Apple Silicon)
    return np.ascontiguousarray(packed).reshape(*q.shape[:-1], q.shape[-1] * bits // 8).view("<u4")


def _f16(raw: np.ndarray) -> np.ndarray:
    """[..., 2] bytes -> [...] float16."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 4-bit storage of a run of 32: byte j holds element j (low nibble) and j + 16 (high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: np.ndarray, count: int) -> np.ndarray:
    """Q5_0/Q5_1: a little-endian uint32 [..., 4 bytes] whose bit j is element j's fifth bit."""
    word = np.ascontiguousarray(qh).view("<u4")
    return ((word >> np.arange(count, dtype=np.uint32)) & 1).astype(np.uint8)


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins (ggml's get_scale_min_k4)."""
    lo, mid, hi = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 2) & 0x30)], axis=-1)
    mins = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 2) & 0x30)], axis=-1)
    return sc, mins


def _legacy(blocks: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 blocks [rows, n, bytes] -> codes [rows, n, 32], scales, biases (fp16)."""
    d = _f16(blocks[..., 0:2])
    if kind == "Q8_0":
        q = (blocks[..., 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return q, d, d * np.float16(-128)  # a power of two: the fp16 product is exact
    with_min = kind in ("Q4_1", "Q5_1")
    start = 4 if with_min else 2
    if kind.startswith("Q5"):
        high = _high_bits(blocks[..., start : start + 4], 32)
        q = _nibbles(blocks[..., start + 4 : start + 20]) | (high << 4)
    else:
        q = _nibbles(blocks[..., start : start + 16])
    bias = _f16(blocks[..., 2:4]) if with_min else d * np.float16(-16 if kind == "Q5_0" else -8)
    return q, d, bias


def _k_quant(blocks: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K / Q5_K super-blocks [rows, n, bytes] -> codes [rows, n, 8 x 32], scales, biases [rows, n, 8] (fp32).

    value = (d * sc) * q - dmin * m, exactly as ggml (and the gguf package) compute it in float32:
    d * sc and dmin * m are exact in float32, so scale * q + bias rounds once, like ggml."""
    d = _f16(blocks[..., 0:2]).astype(np.float32)[..., None]
    dmin = _f16(blocks[..., 2:4]).astype(np.float32)[..., None]
    sc, mins = _k_scales(blocks[..., 4:16])
    if kind == "Q4_K":
        qs = blocks[..., 16:144].reshape(*blocks.shape[:-1], 4, 32)
        q = np.stack([qs & 0x0F, qs >> 4], axis=-2)  # 32 bytes hold sub-blocks 2c (low) and 2c + 1 (high)
    else:
        qh = blocks[..., 16:48]
        qs = blocks[..., 48:176].reshape(*blocks.shape[:-1], 4, 32)
        q = np.stack([qs & 0x0F, qs >> 4], axis=-2).reshape(*blocks.shape[:-1], 8, 32)
        q = q | (((qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1) << 4)
    q = q.reshape(*blocks.shape[:-1], 8, 32)
    return q, d * sc.astype(np.float32), -(dmin * mins.astype(np.float32))


# IQ4_NL's 16 levels (ggml's kvalues_iq4nl): integers, so d * level is an 8-bit affine group exactly.
IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int16)


def _iq4(blocks: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQ4_NL (32: d, 4-bit level indexes) / IQ4_XS (256 = 8 x 32: d, a 6-bit scale per 32) ->
    8-bit codes level + 127 in [0, 240], scale d (* scale), bias -127 * scale: exact."""
    lead = blocks.shape[:-1]
    d = _f16(blocks[..., 0:2]).astype(np.float32)
    if kind == "IQ4_NL":
        index, scale = _nibbles(blocks[..., 2:18]), d[..., None]
    else:
        high = np.ascontiguousarray(blocks[..., 2:4]).view("<u2")  # 2 high bits of each of the 8 scales
        low = (blocks[..., 4:8, None] >> np.array([0, 4], dtype=np.uint8)) & 0x0F
        high = (high >> (2 * np.arange(8, dtype=np.uint16))) & 3
        ls = (low.reshape(*lead, 8) | (high.astype(np.uint8) << 4)).astype(np.float32) - 32
        index = _nibbles(blocks[..., 8:136].reshape(*lead, 8, 16))
        scale = d[..., None] * ls
    q = (IQ4_LEVELS[index] + 127).astype(np.uint8)
    return q, scale, np.float32(-127) * scale


def _signed_codes_q6_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q6_K super-blocks [rows, n, 210] -> codes q - 32 in [-32, 31] [rows, n, 16, 16] and the
    sub-block scales d * sc [rows, n, 16] (float32, exact: 11 x 8 bits)."""
    lead = blocks.shape[:-1]
    ql, qh = blocks[..., 0:128], blocks[..., 128:192]
    sc = blocks[..., 192:208].view(np.int8).astype(np.float32)
    d = _f16(blocks[..., 208:210]).astype(np.float32)[..., None]
    low = (ql.reshape(*lead, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8)[:, None]) & 0x0F
    high = (qh.reshape(*lead, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]) & 0x03
    q = low.reshape(*lead, 8, 32) | (high.reshape(*lead, 8, 32) << 4)
    return q.astype(np.int16).reshape(*lead, 16, 16) - 32, d * sc


def _signed_codes_q3_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q3_K super-blocks [rows, n, 110] -> codes in [-4, 3] [rows, n, 16, 16] and d * sc [rows, n, 16]."""
    lead = blocks.shape[:-1]
    hmask, qs, packed = blocks[..., 0:32], blocks[..., 32:96], blocks[..., 96:108]
    d = _f16(blocks[..., 108:110]).astype(np.float32)[..., None]
    low = (packed[..., None, 0:8] >> np.array([0, 4], dtype=np.uint8)[:, None]) & 0x0F
    high = (packed[..., None, 8:12] >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]) & 0x03
    sc = (low.reshape(*lead, 16) | (high.reshape(*lead, 16) << 4)).astype(np.float32) - 32
    q = (qs.reshape(*lead, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]) & 0x03
    missing = ((hmask[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1) ^ 1  # set bit: no -4
    q = q.reshape(*lead, 16, 16).astype(np.int16) - 4 * missing.reshape(*lead, 16, 16)
    return q, d * sc


def _paired(codes: np.ndarray, scales: np.ndarray, span: int, bits: int):
    """Symmetric sub-blocks of 16 (value = scale_k * code, |code| <= span) paired into MLX groups of 32.

    Each group's step is the larger sub-block's scale divided by 2^bits / (2 span): that sub-block
    stays exact, the other is rounded to this finer step (error at most half of it; it is exact
    too whenever the two scales are in a ratio the step divides, e.g. equal)."""
    lead = codes.shape[:-2]
    codes = codes.reshape(*lead, -1, 2, 16).astype(np.float32)
    scales = scales.reshape(*lead, -1, 2)
    split = (1 << bits) // (2 * span)  # e.g. Q6_K to 8 bits: 256 / 64 = 4 steps per Q6_K step
    larger = np.take_along_axis(scales, np.abs(scales).argmax(axis=-1)[..., None], axis=-1)
    step = larger / split
    safe = np.where(step == 0, 1, step)
    zero = (1 << bits) // 2  # code of the value 0
    q = np.rint(codes * (scales / safe)[..., None]) + zero
    q = np.clip(q, 0, (1 << bits) - 1).astype(np.uint8)  # only a sub-block of opposite sign and equal size can overflow
    return q.reshape(*lead, -1), step[..., 0], -zero * step[..., 0]


def _affine(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float values [rows, n] -> `bits`-bit codes, scales and biases per group of 32, spanning each
    group's range: scale (max - min) / (2^bits - 1), bias min, so every value is within half a scale.
    (MLX's own `mx.quantize` keeps the extreme of larger magnitude exact instead, which can leave the
    other end a whole scale off.)"""
    groups = values.reshape(values.shape[0], -1, GROUP_SIZE)
    low, high = groups.min(axis=-1), groups.max(axis=-1)
    scale = (high - low) / ((1 << bits) - 1)
    safe = np.where(scale == 0, 1, scale)[..., None]
    q = np.clip(np.rint((groups - low[..., None]) / safe), 0, (1 << bits) - 1).astype(np.uint8)
    return q.reshape(values.shape[0], -1), scale, low


# Symmetric types with scales per 16: (decoder, largest |code|).
PAIRED = {"Q6_K": (_signed_codes_q6_k, 32), "Q3_K": (_signed_codes_q3_k, 4)}


def repack(data: np.ndarray, kind: str) -> tuple[mx.array, mx.array, mx.array, int]:
    """A quantized ggml tensor's bytes [..., rows, row bytes] -> MLX (weight, scales, biases, bits)
    with group size 32.

    A block of rows at a time, written into the preallocated outputs (MLX updates them in place),
    so the peak is the result plus one block's temporaries, not two copies of a large embedding."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    qtype = GGMLQuantizationType[kind]
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    lead, row_bytes = data.shape[:-1], data.shape[-1]
    columns = row_bytes // block_bytes * block
    rows = data.reshape(-1, row_bytes)  # still the memory map: each block of rows is read when used
    bits = mlx_bits(kind)
    step = max(1, (1 << 21) // columns)
    outputs = [mx.zeros((rows.shape[0], columns * bits // 32), dtype=mx.uint32),
               mx.zeros((rows.shape[0], columns // GROUP_SIZE), dtype=mx.float32),
               mx.zeros((rows.shape[0], columns // GROUP_SIZE), dtype=mx.float32)]
    for i in range(0, rows.shape[0], step):
        chunk = rows[i : i + step]
        blocks = chunk.reshape(chunk.shape[0], -1, block_bytes)
        if kind in EXACT:
            decode = _iq4 if kind.startswith("IQ4") else _k_quant if kind.endswith("_K") else _legacy
            q, scales, biases = decode(blocks, kind)
        elif kind in PAIRED:
            decode, span = PAIRED[kind]
            q, scales, biases = _paired(*decode(blocks), span, bits)
        else:
            from gguf.quants import dequantize

            q, scales, biases = _affine(dequantize(chunk, qtype), bits)
        n = chunk.shape[0]
        # float32 holds every scale and bias exactly (fp16 values, and the K-quants' 17-bit
        # products), and is what the CPU computes in: no conversion at load.
        part = (pack(q.reshape(n, columns), bits), scales.reshape(n, -1), biases.reshape(n, -1))
        for out, value in zip(outputs, part):
            out[i : i + n] = mx.array(value).astype(out.dtype)
        mx.eval(outputs)
    return (*(x.reshape(*lead, x.shape[-1]) for x in outputs), bits)
