"""The op layer for multiplying by a quantized weight: which implementation runs, decided in one place.

Model code states `x @ W.T` once (MLX's `nn.QuantizedLinear`, `nn.QuantizedEmbedding.as_linear`); on
the CPU backend the weight policy (mlxmodels/cpu_weights.py) gives those layers a call that comes
here, and `quantized_linear` picks, per call, by the number of rows and the weight's layout:

- "native": Orchard's native CPU op (`metal_kernels.cpu`: integer SIMD on the packed codes, on
  threads) for up to `native_max_rows(bits)` rows: decode, speculative verification, small batches;
- "dequantize": dequantize the weight (the native op's SIMD dequantize where it runs, else MLX's) and
  multiply with the float32 GEMM (BLAS) when rows are many (prefill), where a GEMM's reuse of each
  weight beats re-reading packed codes per row;
- "mlx": `mx.quantized_matmul` otherwise (a GPU, a layout the native op does not cover, or the
  native op unbuilt or switched off with ORCHARD_KERNELS=builtin).

`calls` counts the choices, so a benchmark can say which kernel ran.
"""

from __future__ import annotations

from collections import Counter

import mlx.core as mx

from metal_kernels import cpu as native
from metal_kernels.backend import backend_name, kernel_mode

# Rows from which dequantize + GEMM beats MLX's quantized_matmul (measured on the 2-core development
# machine with MKL, 576x1536 4-bit: 2 rows 1.27 ms vs 1.61 ms; see mlxmodels/cpu_weights.py).
DEQUANT_MIN_ROWS = 2
# Without the native op: MLX's CPU dequantize is fast for 2, 4 and 8 bits only: 3, 5 and 6 bits
# (GGUF's Q5_0/Q5_K, K-quant repacks) take a composed fallback, ~10x slower and holding ~5 float copies
# of the weight (2048x640 at 5 bits: 85 ms and 26 MB, against 8 ms and 5 MB at 4 bits). Their quantized
# matmul stays cheaper up to 64-128 rows (measured: 5 bits, 64 rows 219 ms vs 429 ms; 128 rows 830 ms
# vs 382 ms).
SLOW_DEQUANT_BITS = (3, 5, 6)
SLOW_DEQUANT_MIN_ROWS = 128
# Rows up to which the native matmul beats the native dequantize + GEMM: the crossover grows with
# the matrix, as a large one's float32 copy no longer stays in cache (measured per shape in
# docs/performance.md, "Native quantized matmul"; moved up as the op's multi-row float path got faster:
# at least 64 rows since "Serving", run 9).
NATIVE_ROWS_PER_4M_WEIGHTS = 20
NATIVE_MAX_ROWS = (64, 128)  # bounds of that rule

calls: Counter = Counter()  # implementation -> calls, for benchmarks


def native_max_rows(weights: int) -> int:
    """The most rows the native matmul takes for a matrix of `weights` elements (the rule above:
    64 up to 13M weights, 80 at 16M, 128 from 27M)."""
    low, high = NATIVE_MAX_ROWS
    return max(low, min(high, weights * NATIVE_ROWS_PER_4M_WEIGHTS >> 22))


def native_enabled() -> bool:
    """Whether quantized weights on this backend can go through the native op at all."""
    return backend_name() == "cpu" and kernel_mode() != "builtin" and native.available()


def choose(rows: int, weights: int, bits: int, group_size: int, mode: str = "affine") -> str:
    """The implementation `quantized_linear` uses for `rows` rows of input and a weight of `weights`
    elements. Decode calls this a few hundred times per token, so the cheap tests come first."""
    if backend_name() != "cpu":
        return "mlx"
    if native.supports(bits, group_size, mode) and native.available() and kernel_mode() != "builtin":
        return "native" if rows <= native_max_rows(weights) else "dequantize"
    if rows >= (SLOW_DEQUANT_MIN_ROWS if bits in SLOW_DEQUANT_BITS else DEQUANT_MIN_ROWS):
        return "dequantize"
    return "mlx"


def quantized_linear(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array | None, group_size: int,
                     bits: int, mode: str = "affine") -> mx.array:
    """x @ dequantize(w, scales, biases).T, by the implementation `choose` picks."""
    features = x.shape[-1]
    how = choose(x.size // features if features else 0, w.shape[0] * features, bits, group_size, mode)
    calls[how] += 1
    if how == "native":
        return native.module().quantized_matmul(x, w, scales, biases, True, group_size, bits)
    if how == "dequantize" and x.dtype == mx.float32 and native.supports(bits, group_size, mode) and native_enabled():
        return x @ native.module().dequantize(w, scales, biases, group_size, bits).T
    if mx.issubdtype(scales.dtype, mx.floating) and scales.dtype != x.dtype:
        # Narrower stored scales (see cpu_weights._compact_scales): dequantize in x's dtype, not theirs.
        scales = scales.astype(x.dtype)
        biases = None if biases is None else biases.astype(x.dtype)
    if how == "dequantize":
        dense = mx.dequantize(w, scales, biases, group_size, bits, mode)
        return x @ dense.astype(x.dtype).T
    return mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size=group_size, bits=bits, mode=mode)


def describe() -> str:
    """One line on what quantized matmuls run on this backend, for stats and benchmarks."""
    if backend_name() != "cpu":
        return "MLX's quantized kernels"
    fallback = f"MLX's quantized_matmul, dequantize + GEMM from {DEQUANT_MIN_ROWS} rows; native CPU kernel"
    if kernel_mode() == "builtin":
        return f"{fallback} off (ORCHARD_KERNELS=builtin)"
    if not native.available():
        return f"{fallback} {native.unavailable_reason()}"
    low, high = NATIVE_MAX_ROWS
    return (f"native CPU kernel ({native.describe()}) up to {low}-{high} rows by matrix size, native "
            f"dequantize + GEMM above")
