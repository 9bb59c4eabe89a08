"""Orchard's native quantized matmul for MLX's CPU backend: an MLX extension op (C++ beside this file).

`pip install` builds it (scikit-build-core runs CMakeLists.txt here) when it can: Linux, a C++20
compiler, Python's headers. Without one of those, or with ORCHARD_BUILD_CPU_KERNELS=0, the install
still succeeds, the module is simply absent, and `unavailable_reason()` says why in one line; the
engine then keeps MLX's kernels (see metal_kernels/quantized.py, the op layer that picks).

The ops are `quantized_matmul(x, w, scales, biases, transpose=True, group_size, bits)`, called like
`mx.quantized_matmul` for MLX's affine layout (bits 2, 3, 4, 5, 6, 8; groups of 32, 64, 128; the
layouts GGUF weights are repacked into included). On AVX-512 it dequantizes each block of two
output rows' weights to float once (scale * code + bias: a table lookup per 4-bit code) and
multiplies it with every row's float32 x by FMA, sharing the unpacking between the rows and each
load of x between the two outputs. Elsewhere (AVX2, NEON, plain C++; chosen at run time by what the
CPU has) it takes an integer path: per block of 32 activations a step dx = max|x| / 32767 and each x
as two int16 parts, x = dx * (hi + lo / 65534), multiplied with the weight codes by integer SIMD dot
products (vpmaddwd, vmlal), the bias term from the exact float sum of x. Either runs over the output
rows on a pool of threads, one per physical core (`ORCHARD_CPU_THREADS` overrides), asking for the
weights a few rows ahead. Nothing is allocated per call but the output (scratch buffers only grow).
docs/performance.md ("Second pass", "Third pass") has the measurements. And `dequantize(w, scales, biases, group_size, bits)`: the float32 weight for the GEMM path,
~10x MLX's CPU dequantize.

The same module holds the fused operations of a decode step (fused.cpp): `rms_norm`, table `rope`,
one-query `decode_attention` and the gated activations, each one MLX operation where MLX's CPU
backend runs 10-30, and the row `softmax` of a prefill's attention; mlxmodels/layers/ops.py routes
float32 CPU arrays to them.

Error bound (tests/test_cpu_qmm.py checks it): on the float path, that of a float32 matmul on the
dequantized weight (scale * code rounded once, then FMA sums). On the integer path, each activation
is kept to within dx / 131068, so
against x @ dequantize(w).T in exact arithmetic
  |dy[m, n]| <= sum_k |scale[n, g(k)] * q[n, k]| * max|x[m, block(k)]| * 2.4e-10  + float32 rounding,
q the weight's code: float32 rounding (K * 2^-24 of the products' magnitudes, worst case) is the
larger term by far, so the result agrees with a float32 matmul on the dequantized weights as closely
as two float32 summation orders do. Cheaper roundings were measured and refused: int8 activations
(llama.cpp's Q8 blocks) cost 0.035 nats/token of KL and +2.3% perplexity on SmolLM2-135M; one int16
part (~1.5e-5 of each product) was close in KL (4e-6) but turned float32-ulp differences between two
paths to the same row (a chunked prefill, a batched decode) into logit differences of ~1e-2, which
swap greedy tokens at near ties. The second part costs ~10% more time per matmul at one row.
"""

from __future__ import annotations

import os
import re

import mlx.core as mx  # before the extension: it loads libmlx and registers mx.array with nanobind

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)

_module = None
_reason: str | None = None
_loaded = False


def _release(version: str) -> str:
    """'0.32.4' of '0.32.4', '0.32.4.dev20260101+abc' (the CMake files carry no dev suffix)."""
    match = re.match(r"\d+\.\d+\.\d+", version)
    return match.group(0) if match else version


def thread_setting() -> int | None:
    """ORCHARD_CPU_THREADS as a number of threads (None: one per physical core); a one-line error
    for anything but a positive integer (checked up front by the CLI)."""
    raw = os.environ.get("ORCHARD_CPU_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"ORCHARD_CPU_THREADS must be a positive whole number of threads, got {raw!r}")
    return int(raw)


def _load():
    """(the extension module, None) or (None, why it cannot be used)."""
    try:
        from metal_kernels.cpu import _build_info
    except ImportError:
        _build_info = None  # a source checkout nobody installed: try the module anyway
    if _build_info is not None and not _build_info.BUILT:
        return None, f"not built at install ({_build_info.SKIP_REASON})"
    if _build_info is not None and _release(_build_info.MLX_VERSION) != _release(mx.__version__):
        # C++ against another MLX's headers is not ABI-safe: rebuild rather than risk it.
        return None, (f"built against MLX {_build_info.MLX_VERSION} but MLX {mx.__version__} is installed "
                      f"(reinstall Orchard to rebuild it)")
    try:
        from metal_kernels.cpu import _qmm
    except ImportError as e:
        if _build_info is None:  # e.g. an install made before the build step existed
            return None, "not built (reinstall Orchard: pip install -e .)"
        return None, f"cannot be loaded: {e}"
    try:  # nanobind must see mx.array as its own type (same nanobind ABI as MLX's bindings)
        x = mx.ones((1, 32))
        w, s, b = mx.quantize(mx.ones((1, 32)), group_size=32, bits=4)
        mx.eval(_qmm.quantized_matmul(x, w, s, b, True, 32, 4))
    except (TypeError, RuntimeError, ValueError) as e:
        return None, f"does not work with this MLX ({str(e).splitlines()[0]})"
    return _qmm, None


def _ensure_loaded() -> None:
    global _module, _reason, _loaded
    if not _loaded:
        _module, _reason = _load()
        _loaded = True


def available() -> bool:
    """Whether the native op is built, loads and runs with the installed MLX."""
    if not _loaded:
        _ensure_loaded()
    return _module is not None


def unavailable_reason() -> str | None:
    """One line on why the native op cannot run; None when it can."""
    _ensure_loaded()
    return _reason


def supports(bits: int, group_size: int, mode: str = "affine") -> bool:
    """Whether the op covers this quantization layout."""
    return mode == "affine" and bits in BITS and group_size in GROUP_SIZES


def quantized_matmul(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, transpose: bool = True,
                     group_size: int = 64, bits: int = 4) -> mx.array:
    """x @ dequantize(w, scales, biases).T, activations held as two int16 parts (the module docstring
    states the error bound)."""
    return module().quantized_matmul(x, w, scales, biases, transpose, group_size, bits)


def dequantize(w: mx.array, scales: mx.array, biases: mx.array, group_size: int = 64, bits: int = 4) -> mx.array:
    """dequantize(w, scales, biases) in float32, like mx.dequantize (the GEMM path's first step): SIMD
    and threads, within one float32 rounding of scale * q + bias (a fused multiply-add)."""
    return module().dequantize(w, scales, biases, group_size, bits)


def module():
    """The extension module itself (raises when it is unavailable)."""
    _ensure_loaded()
    if _module is None:
        raise RuntimeError(f"Orchard's native CPU quantized matmul is unavailable: {_reason}")
    return _module


def variants() -> list[str]:
    """The instruction-set variants built in that this CPU runs, best first (the first is used)."""
    return list(module().variants())


def set_variant(name: str) -> None:
    """Use another of `variants()` (tests run each against MLX)."""
    module().set_variant(name)


def set_threads(threads: int) -> None:
    """Threads one matmul splits its output rows over, the caller included."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    module().set_threads(threads)


def describe() -> str:
    """'avx512, 2 threads', or why the op is unavailable."""
    _ensure_loaded()
    if _module is None:
        return f"unavailable: {_reason}"
    threads = _module.threads()
    return f"{_module.variant()}, {threads} thread{'s' if threads != 1 else ''}"
