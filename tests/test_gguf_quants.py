"""GGUF quantized blocks -> MLX quantized arrays (mlxmodels/gguf_quants.py), checked against the `gguf`
package's own dequantization (`gguf.quants.dequantize`, llama.cpp's reference numpy code) of random
blocks, and MLX's own bit packing against `mx.dequantize`."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from mlxmodels.gguf_quants import EXACT, PAIRED, REQUANTIZED, pack, repack

# Byte offsets of each type's float16 fields within a block (random bytes there would be inf / NaN,
# or scales of 1e4 that no model has): they get N(0, 0.01^2) values instead.
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2],
    "Q6_K": [208], "Q3_K": [108], "Q2_K": [80, 82], "IQ4_NL": [0], "IQ4_XS": [0], "IQ3_S": [0],
    "IQ3_XXS": [0], "IQ2_S": [0], "IQ2_XS": [0], "IQ2_XXS": [0], "IQ1_S": [0], "TQ1_0": [52], "TQ2_0": [64],
}


def random_blocks(kind: str, shape: tuple, seed: int = 0) -> np.ndarray:
    """Random ggml blocks for a tensor of `shape` (last axis: values per row), as rows of bytes."""
    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(*shape[:-1], shape[-1] // block, block_bytes), dtype=np.uint8)
    for offset in F16_FIELDS.get(kind, []):
        d = (rng.standard_normal(blocks.shape[:-1]) * 0.01).astype(np.float16)
        blocks[..., offset : offset + 2] = d[..., None].view(np.uint8).reshape(*d.shape, 2)
    if kind == "MXFP4":  # the E8M0 exponent byte: 2^(e - 127), near 1 rather than up to 2^128
        blocks[..., 0] = rng.integers(120, 130, size=blocks.shape[:-1])
    return blocks.reshape(*shape[:-1], -1)


def mlx_values(data: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, int]:
    weight, scales, biases, bits = repack(data, kind)
    values = mx.dequantize(weight, scales, biases, group_size=32, bits=bits)
    return np.array(values), np.array(scales), bits


def reference(data: np.ndarray, kind: str) -> np.ndarray:
    rows = data.reshape(-1, data.shape[-1])
    return dequantize(rows, GGMLQuantizationType[kind]).reshape(*data.shape[:-1], -1)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_is_mlx_layout(bits):
    codes = np.random.default_rng(bits).integers(0, 1 << bits, size=(3, 128))
    packed = mx.array(pack(codes, bits))
    ones, zeros = mx.ones((3, 4)), mx.zeros((3, 4))
    assert np.array_equal(np.array(mx.dequantize(packed, ones, zeros, group_size=32, bits=bits)), codes)


@pytest.mark.parametrize("kind", list(EXACT))
def test_exact_types_repack_bit_for_bit(kind):
    """value = scale * q + bias, each of them exact in float32: MLX's dequantization is the gguf
    package's, bit for bit (expert-stacked 3-D tensors included)."""
    for shape in [(5, 512), (2, 3, 256)]:
        data = random_blocks(kind, shape)
        ours, _, bits = mlx_values(data, kind)
        assert bits == EXACT[kind]
        assert ours.shape == shape and np.array_equal(ours, reference(data, kind)), (kind, shape)


@pytest.mark.parametrize("kind", list(PAIRED))
def test_paired_types_keep_the_larger_sub_block_exact(kind):
    """Q6_K / Q3_K: of the two 16-value sub-blocks in an MLX group of 32, the one with the larger
    scale is exact and the other within half the group's (finer) step; the one exception, a code
    at the end of a sub-block whose scale is exactly opposite to its partner's, is one step off."""
    data = random_blocks(kind, (6, 1024), seed=1)
    ours, scales, _ = mlx_values(data, kind)
    theirs = reference(data, kind)
    error = np.abs(ours - theirs).reshape(6, -1, 2, 16).max(axis=-1)
    magnitude = np.abs(theirs).reshape(6, -1, 2, 16).max(axis=-1)
    step = np.abs(scales)[..., None]
    assert np.all(error.min(axis=-1) == 0)  # at least one sub-block per group exact
    assert np.all(error <= step * (1 + 1e-6))
    within_half = error <= 0.5 * step * (1 + 1e-6) + 1e-7 * magnitude
    assert within_half.mean() > 0.99


@pytest.mark.parametrize("kind", [k for k in REQUANTIZED if k not in PAIRED])
def test_requantized_types_within_half_a_step(kind):
    """Other types: each group of 32 spans its values' range in 2^bits - 1 steps, so every value is
    within half a step (plus float32 rounding of scale * q + bias)."""
    block, _ = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    data = random_blocks(kind, (4, 2 * max(block, 256)), seed=2)
    theirs = reference(data, kind)
    keep = np.isfinite(theirs).all(axis=-1)  # random codebook bytes may decode to inf
    data, theirs = data[keep], theirs[keep]
    ours, scales, bits = mlx_values(data, kind)
    assert bits == REQUANTIZED[kind]
    groups = theirs.reshape(len(theirs), -1, 32)
    step = (groups.max(axis=-1) - groups.min(axis=-1)) / ((1 << bits) - 1)
    assert np.allclose(np.abs(scales), step, rtol=1e-6, atol=0)
    error = np.abs(ours - theirs).reshape(groups.shape).max(axis=-1)
    assert np.all(error <= 0.5 * step * (1 + 1e-5) + 1e-7 * np.abs(groups).max(axis=-1))
