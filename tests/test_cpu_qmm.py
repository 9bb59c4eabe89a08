"""Orchard's native CPU quantized matmul (metal_kernels/cpu) against MLX's own ops, the op layer that
picks it (metal_kernels/quantized.py), the CPU weight policy that relies on it, and the fallbacks
when it is missing.

Two references, both MLX's built-in ops: `x @ mx.dequantize(w).T` in float32.
- With activations that one int16 part per block represents exactly (each block of 32 is a power of
  two times integers in [-32767, 32767], one of them +-32767), the kernel's only error is float32
  rounding.
- With arbitrary activations it must stay within its stated bound (metal_kernels/cpu/__init__.py):
  each activation is kept to within dx / 131068 (dx = max|x_block| / 32767), so
  |dy| <= sum_k |scale * q_k| * max|x_block| * 2.4e-10 + float32 rounding, q the weight code.
In both, "float32 rounding" is a few ulps of the sum of |terms|: K * 2^-24 of it per computation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxmodels
from metal_kernels import cpu as native
from metal_kernels import quantized
from mlxmodels import cpu_weights

BITS = (2, 3, 4, 5, 6, 8)
GROUPS = (32, 64, 128)
ROOT = Path(__file__).resolve().parents[1]

needs_native = pytest.mark.skipif(not native.available(), reason=f"native CPU op: {native.unavailable_reason()}")


@pytest.fixture(params=native.variants() if native.available() else ["none"])
def variant(request):
    """Every instruction-set variant this CPU runs (AVX-512, AVX2, plain C++ on x86-64)."""
    if request.param == "none":
        pytest.skip(f"native CPU op: {native.unavailable_reason()}")
    best = native.variants()[0]
    native.set_variant(request.param)
    yield request.param
    native.set_variant(best)


def quantized_weight(rng, n: int, k: int, group_size: int, bits: int, scale_dtype=mx.float32):
    w = mx.array(rng.standard_normal((n, k)).astype(np.float32))
    packed, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
    return packed, scales.astype(scale_dtype), biases.astype(scale_dtype)


def dense(packed, scales, biases, group_size, bits) -> np.ndarray:
    return np.array(mx.dequantize(packed, scales, biases, group_size=group_size, bits=bits).astype(mx.float32),
                    dtype=np.float64)


def codes(packed, scales, group_size, bits) -> np.ndarray:
    ones = mx.ones(scales.shape, dtype=mx.float32)
    return np.array(mx.dequantize(packed, ones, mx.zeros_like(ones), group_size=group_size, bits=bits), dtype=np.float64)


def exact_activations(rng, m: int, k: int) -> np.ndarray:
    """x that one int16 part per block holds exactly: 2^e * integers with a +-32767 in every block."""
    q = rng.integers(-32767, 32768, size=(m, k // 32, 32))
    q[:, :, 0] = np.where(rng.random((m, k // 32)) < 0.5, -32767, 32767)
    step = 2.0 ** rng.integers(-16, -10, size=(m, k // 32, 1))
    return (q * step).reshape(m, k).astype(np.float32)


def float_rounding(x: np.ndarray, packed, scales, biases, group_size, bits) -> np.ndarray:
    """A few ulps of the sum of |terms| of both float32 computations, kernel and reference, whose
    partial sums (of scale * code * x and of bias * x) come in different orders: K * 2^-24 each."""
    c = codes(packed, scales, group_size, bits)
    s = np.repeat(np.abs(np.array(scales.astype(mx.float32), dtype=np.float64)), group_size, axis=1)
    b = np.repeat(np.abs(np.array(biases.astype(mx.float32), dtype=np.float64)), group_size, axis=1)
    mass = np.abs(x) @ (np.abs(dense(packed, scales, biases, group_size, bits)) + c * s + b).T
    return 2 * x.shape[-1] * 2.0**-24 * mass + 1e-30


def assert_fp32_close(got, expected, x, packed, scales, biases, group_size, bits):
    x = np.array(x.astype(mx.float32)).reshape(-1, x.shape[-1])
    tolerance = float_rounding(x, packed, scales, biases, group_size, bits)
    error = np.abs(np.array(got, dtype=np.float64) - np.array(expected, dtype=np.float64)).reshape(tolerance.shape)
    assert np.all(error <= tolerance), float((error / tolerance).max())


def activation_bound(x: np.ndarray, packed, scales, group_size, bits) -> np.ndarray:
    """The stated bound on what holding activations as two int16 parts per block of 32 can change."""
    c = codes(packed, scales, group_size, bits)
    s = np.repeat(np.abs(np.array(scales.astype(mx.float32), dtype=np.float64)), group_size, axis=1)
    half_step = np.repeat(np.abs(x).reshape(x.shape[0], -1, 32).max(-1) * 2.4e-10, 32, axis=1)
    return half_step @ (c * s).T


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
def test_exact_on_int16_representable_activations(variant, bits, group_size):
    """Every bit width, group size and row count 1..8 (and 13, 17: several tiles of rows, the last
    one partial), on sizes that are not multiples of the vector width: N odd, K an odd number of
    32-blocks (the AVX-512 pair loop's tail)."""
    rng = np.random.default_rng(bits * 1000 + group_size)
    for n, k in ((37, 3 * group_size), (1, group_size), (130, 5 * group_size)):
        packed, scales, biases = quantized_weight(rng, n, k, group_size, bits)
        for m in (*range(1, 9), 13, 17):
            x = exact_activations(rng, m, k)
            got = np.array(native.quantized_matmul(mx.array(x), packed, scales, biases, True, group_size, bits))
            expected = np.array(mx.array(x) @ mx.dequantize(packed, scales, biases, group_size=group_size,
                                                            bits=bits).T)
            assert got.shape == (m, n)
            tolerance = float_rounding(x, packed, scales, biases, group_size, bits)
            assert np.all(np.abs(got - expected) <= tolerance), (variant, bits, group_size, m, n, k)


def _against_mlx(x, packed, scales, biases, group_size, bits):
    """(the native op's product, x @ mx.dequantize(w).T, the stated error bound), in float64."""
    got = np.array(native.quantized_matmul(mx.array(x), packed, scales, biases, True, group_size, bits),
                   dtype=np.float64)
    expected = np.array(mx.array(x) @ mx.dequantize(packed, scales, biases, group_size=group_size, bits=bits).T,
                        dtype=np.float64)
    bound = activation_bound(x, packed, scales, group_size, bits)
    bound += float_rounding(x, packed, scales, biases, group_size, bits)
    return got, expected, bound


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
def test_within_the_activation_bound(variant, bits, group_size):
    rng = np.random.default_rng(7 + bits * 100 + group_size)
    n, k = 45, 3 * group_size
    packed, scales, biases = quantized_weight(rng, n, k, group_size, bits)
    for m in (1, 3, 8):
        x = rng.standard_normal((m, k)).astype(np.float32)
        x[:, rng.integers(0, k, size=3)] *= 20  # outliers: the blocks holding them get coarse steps
        got, expected, bound = _against_mlx(x, packed, scales, biases, group_size, bits)
        error = np.abs(got - expected)
        assert np.all(error <= bound), (variant, bits, group_size, m, float((error / bound).max()))
        # Rounding errors of different terms cancel: the typical error is far below the worst case.
        assert error.mean() < 0.1 * bound.mean()


def test_random_shapes(variant):
    """Drawn sizes: N and the number of groups anything, so rows, pairs of blocks and vector widths
    all come out uneven; every draw within the bound against MLX."""
    rng = np.random.default_rng(11)
    for _ in range(24):
        bits, group_size = int(rng.choice(BITS)), int(rng.choice(GROUPS))
        n, k, m = int(rng.integers(1, 300)), group_size * int(rng.integers(1, 12)), int(rng.integers(1, 9))
        packed, scales, biases = quantized_weight(rng, n, k, group_size, bits)
        x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 100)).astype(np.float32)
        got, expected, bound = _against_mlx(x, packed, scales, biases, group_size, bits)
        assert np.all(np.abs(got - expected) <= bound), (variant, bits, group_size, m, n, k)


@needs_native
@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_half_precision_activations_scales_and_output(dtype):
    rng = np.random.default_rng(3)
    packed, scales, biases = quantized_weight(rng, 33, 192, 64, 4, scale_dtype=dtype)
    x = mx.array(rng.standard_normal((4, 192)).astype(np.float32)).astype(dtype)
    got = native.quantized_matmul(x, packed, scales, biases, True, 64, 4)
    expected = mx.quantized_matmul(x, packed, scales, biases, transpose=True, group_size=64, bits=4)
    assert got.dtype == expected.dtype == dtype
    x32 = np.array(x.astype(mx.float32))
    reference = np.array(x.astype(mx.float32) @ mx.dequantize(packed, scales.astype(mx.float32),
                                                               biases.astype(mx.float32), group_size=64, bits=4).T)
    # The kernel sums in float32 and rounds once to the output type: half an ulp of it, on top of
    # the activation bound and float32 rounding.
    half_ulp = 2.0**-11 if dtype == mx.float16 else 2.0**-8
    tolerance = (activation_bound(x32, packed, scales, 64, 4) + float_rounding(x32, packed, scales, biases, 64, 4)
                 + half_ulp * np.abs(reference))
    assert np.all(np.abs(np.array(got.astype(mx.float32)) - reference) <= tolerance)
    mixed = native.quantized_matmul(x.astype(mx.float32), packed, scales, biases, True, 64, 4)
    assert mixed.dtype == mx.float32  # MLX's promotion: float32 x with half scales gives float32


@needs_native
def test_leading_dimensions_strided_and_broadcast_inputs():
    rng = np.random.default_rng(4)
    packed, scales, biases = quantized_weight(rng, 40, 128, 32, 4)
    x = mx.array(exact_activations(rng, 6, 128)).reshape(2, 3, 128)

    def check(a):
        got = native.quantized_matmul(a, packed, scales, biases, True, 32, 4)
        assert got.shape == (*a.shape[:-1], 40)
        expected = a @ mx.dequantize(packed, scales, biases, group_size=32, bits=4).T
        assert_fp32_close(got, expected, a, packed, scales, biases, 32, 4)

    check(x)
    check(mx.array(exact_activations(rng, 6, 128).T.copy()).T)  # a transposed view: not row-contiguous
    check(mx.broadcast_to(x[:1, :1], (4, 1, 128)))
    assert native.quantized_matmul(mx.zeros((0, 128)), packed, scales, biases, True, 32, 4).shape == (0, 40)


@needs_native
def test_threads_do_not_change_the_result():
    """Rows are split over threads whole: every output row is computed the same way on any thread."""
    rng = np.random.default_rng(5)
    packed, scales, biases = quantized_weight(rng, 1000, 512, 64, 4)  # large enough to be split
    x = mx.array(rng.standard_normal((3, 512)).astype(np.float32))
    threads = native.module().threads()
    try:
        native.set_threads(1)
        alone = native.quantized_matmul(x, packed, scales, biases, True, 64, 4)
        mx.eval(alone)
        native.set_threads(3)
        together = native.quantized_matmul(x, packed, scales, biases, True, 64, 4)
        assert mx.array_equal(alone, together)
    finally:
        native.set_threads(threads)


@needs_native
@pytest.mark.parametrize("call, message", [
    (lambda p, s, b, x: native.quantized_matmul(x, p, s, b, False, 64, 4), "transpose=True"),
    (lambda p, s, b, x: native.quantized_matmul(x, p, s, b, True, 64, 7), "bits must be"),
    (lambda p, s, b, x: native.quantized_matmul(x, p, s, b, True, 16, 4), "group_size must be"),
    (lambda p, s, b, x: native.quantized_matmul(x[:, :64], p, s, b, True, 64, 4), "x has 64 features but w"),
    (lambda p, s, b, x: native.quantized_matmul(x, p, s, None, True, 64, 4), "biases are required"),
    (lambda p, s, b, x: native.quantized_matmul(x, p, s[:, :1], b, True, 64, 4), "scales and biases must"),
])
def test_bad_arguments_are_one_line_errors(call, message):
    packed, scales, biases = quantized_weight(np.random.default_rng(6), 8, 128, 64, 4)
    with pytest.raises(ValueError, match=message):
        call(packed, scales, biases, mx.ones((2, 128)))


# ---- the op layer -------------------------------------------------------------------------------


@needs_native
def test_op_layer_picks_native_for_few_rows_and_a_gemm_for_many(monkeypatch):
    monkeypatch.delenv("ORCHARD_KERNELS", raising=False)
    small, large = 576 * 1536, 8192 * 2048  # SmolLM2's MLP, a 1B model's
    top = quantized.native_max_rows(small)
    assert top == 64 and quantized.native_max_rows(large) == 80  # the measured crossovers
    assert quantized.choose(1, small, 4, 64) == quantized.choose(top, small, 4, 64) == "native"
    assert quantized.choose(top + 1, small, 4, 64) == "dequantize"
    assert quantized.choose(top + 1, large, 4, 64) == "native"
    assert quantized.choose(1, small, 4, 64, mode="mxfp4") == "mlx"  # a layout the native op does not cover
    monkeypatch.setenv("ORCHARD_KERNELS", "builtin")
    assert quantized.choose(1, small, 4, 64) == "mlx" and quantized.choose(top, small, 4, 64) == "dequantize"
    assert quantized.choose(64, small, 5, 32) == "mlx"  # MLX's 5-bit dequantize is slow: its matmul up to 128 rows
    monkeypatch.setattr(quantized, "backend_name", lambda: "metal")
    monkeypatch.delenv("ORCHARD_KERNELS")
    assert quantized.choose(1, small, 4, 64) == quantized.choose(512, small, 4, 64) == "mlx"


@needs_native
@pytest.mark.parametrize("bits", BITS)
def test_native_dequantize_matches_mlx(variant, bits):
    """The GEMM path's dequantize: scale * q + bias in one fused multiply-add where MLX rounds twice,
    so within 2^-23 of |scale * q| + |bias| of MLX's, for every group size and scale type."""
    rng = np.random.default_rng(bits)
    for group_size in GROUPS:
        for dtype in (mx.float32, mx.float16, mx.bfloat16):
            packed, scales, biases = quantized_weight(rng, 37, 3 * group_size, group_size, bits, scale_dtype=dtype)
            got = np.array(native.dequantize(packed, scales, biases, group_size, bits))
            s32, b32 = scales.astype(mx.float32), biases.astype(mx.float32)
            expected = np.array(mx.dequantize(packed, s32, b32, group_size=group_size, bits=bits))
            magnitude = (codes(packed, scales, group_size, bits) * np.repeat(np.abs(np.array(s32)), group_size, 1)
                         + np.repeat(np.abs(np.array(b32)), group_size, 1))
            assert got.dtype == np.float32 and got.shape == expected.shape
            assert np.all(np.abs(got - expected) <= 2.0**-23 * magnitude), (variant, bits, group_size, dtype)


@pytest.mark.parametrize("rows", [1, 5, 40])
def test_op_layer_results_match_mlx_whatever_it_picks(rows, monkeypatch):
    rng = np.random.default_rng(rows)
    packed, scales, biases = quantized_weight(rng, 24, 256, 64, 4)
    x = mx.array(exact_activations(rng, rows, 256))
    expected = mx.quantized_matmul(x, packed, scales, biases, transpose=True, group_size=64, bits=4)
    for mode in ("auto", "builtin"):  # native or MLX's dequantize, below or above the crossover
        monkeypatch.setenv("ORCHARD_KERNELS", mode)
        got = quantized.quantized_linear(x, packed, scales, biases, 64, 4)
        assert_fp32_close(got, expected, x, packed, scales, biases, 64, 4)
    # float16 scales (the policy narrows them where exact): dequantized in x's dtype, not theirs
    got = quantized.quantized_linear(x, packed, scales.astype(mx.float16), biases.astype(mx.float16), 64, 4)
    narrowed = mx.quantized_matmul(x, packed, scales.astype(mx.float16).astype(mx.float32),
                                   biases.astype(mx.float16).astype(mx.float32), transpose=True, group_size=64, bits=4)
    assert got.dtype == mx.float32
    assert_fp32_close(got, narrowed, x, packed, scales, biases, 64, 4)


# ---- the CPU weight policy ----------------------------------------------------------------------


@needs_native
def test_auto_keeps_quantized_weights_and_runs_them_natively(default_model_dir, monkeypatch):
    monkeypatch.delenv("ORCHARD_KERNELS", raising=False)
    reference, tokenizer = mlxmodels.load(default_model_dir, cpu_weights="mlx")
    model, _ = mlxmodels.load(default_model_dir, cpu_weights="auto")
    assert model.info.cpu_weights == "quantized" and model.info.cpu_weights_bytes == 0
    linears = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert linears and all(type(m) is cpu_weights.DispatchedQuantizedLinear for m in linears)
    assert type(model.model.embed_tokens) is cpu_weights.DispatchedQuantizedEmbedding  # the tied LM head
    # SmolLM2's checkpoint stores float16 scales: kept so (exact), half the scale bytes of float32
    assert all(m.scales.dtype == mx.float16 for m in linears)
    assert "native CPU kernel" in model.info.describe_cpu_weights()
    # Its weights (98 MB) sit on 2 MB pages where Linux's transparent huge pages are on (allocator.py).
    import platform

    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    release = tuple(int(p) for p in platform.release().split(".")[:2] if p.isdigit())
    if thp.is_file() and ("[always]" in thp.read_text() or "[madvise]" in thp.read_text()) and release >= (6, 1):
        assert model.info.huge_page_bytes > 32e6
        assert "on 2 MB pages" in model.info.describe_cpu_weights()

    ids = mx.array([tokenizer.encode("The quick brown fox jumps over the lazy dog because")])
    quantized.calls.clear()
    logits = model(ids[:, -1:])  # one row per layer: the native op
    assert quantized.calls["native"] > 0 and quantized.calls["mlx"] == 0
    expected = reference(ids[:, -1:])
    # Float32 summation orders through 30 layers: the fp32-copies policy is ~1e-6 of the spread from
    # MLX's kernels. Measured here ~1e-5 of the spread (one int16 part per activation: 7e-4; int8: 5e-2).
    spread = float(expected.max() - expected.min())
    assert float(mx.abs(logits - expected).max()) < 2e-4 * spread
    assert int(logits[0, -1].argmax()) == int(expected[0, -1].argmax())


@needs_native
def test_next_token_distributions_match_mlx_kernels(default_model_dir, monkeypatch):
    """KL(MLX's kernels || native op) over 128 positions of the shipped calibration text, every
    matmul forced through the native op (a whole sequence is many rows: normally a GEMM's job)."""
    from importlib import resources

    monkeypatch.delenv("ORCHARD_KERNELS", raising=False)
    monkeypatch.setattr(quantized, "NATIVE_MAX_ROWS", (1 << 30, 1 << 30))
    reference, tokenizer = mlxmodels.load(default_model_dir, cpu_weights="mlx")
    model, _ = mlxmodels.load(default_model_dir, cpu_weights="quantized")
    text = resources.files("orchard_assets").joinpath("calibration.txt").read_text()
    ids = mx.array([tokenizer.encode(text)[:128]])
    quantized.calls.clear()
    ours, theirs = model(ids), reference(ids)
    assert quantized.calls["native"] > 0 and quantized.calls["dequantize"] == 0
    log_p, log_q = theirs - mx.logsumexp(theirs, -1, keepdims=True), ours - mx.logsumexp(ours, -1, keepdims=True)
    kl = float((mx.exp(log_p) * (log_p - log_q)).sum(-1).mean())
    # Float32 arithmetic in another order: ~1e-9 nats/token measured (int8 activations: 0.035,
    # one int16 part: 4e-6, the 4-bit weights themselves: ~0.1).
    assert kl < 1e-6
    assert float((ours.argmax(-1) == theirs.argmax(-1)).mean()) >= 0.98


@needs_native
def test_greedy_answer_matches_mlx_kernels(default_model_dir, monkeypatch):
    monkeypatch.delenv("ORCHARD_KERNELS", raising=False)
    reference, tokenizer = mlxmodels.load(default_model_dir, cpu_weights="mlx")
    model, _ = mlxmodels.load(default_model_dir, cpu_weights="quantized")
    question = ("Rivers carry water from mountains and hills down to lakes and the sea. Along the way they "
                "shape valleys, feed farms and cities, and give homes to fish and birds. Write one sentence "
                "about why people have always settled beside rivers.")  # > 64 tokens: prefilled by a GEMM
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    quantized.calls.clear()
    ours, _ = mlxmodels.generate(model, tokenizer, prompt, max_tokens=24)
    assert quantized.calls["native"] > 0 and quantized.calls["dequantize"] > 0  # decode, and the prefill
    assert ours == mlxmodels.generate(reference, tokenizer, prompt, max_tokens=24)[0]


# ---- fallbacks: not built, not loadable, switched off -------------------------------------------


@pytest.fixture
def reload_native(monkeypatch):
    """Forget the loaded module so the next call loads it again (under the test's patches)."""
    for name in ("_module", "_reason", "_loaded"):
        monkeypatch.setattr(native, name, getattr(native, name))
    monkeypatch.setattr(native, "_loaded", False)
    return native


def check_fallback(default_model_dir, reason_start: str):
    assert not native.available()
    assert native.unavailable_reason().startswith(reason_start)
    assert quantized.choose(1, 1 << 20, 4, 64) == "mlx"
    assert quantized.describe().endswith("native CPU kernel " + native.unavailable_reason())
    model = mlxmodels.load_model(default_model_dir, cpu_weights="auto")
    assert model.info.cpu_weights == "fp32"  # today's path: fp32 copies within the budget
    with pytest.raises(RuntimeError, match="unavailable"):
        native.quantized_matmul(mx.ones((1, 64)), *mx.quantize(mx.ones((8, 64))), True, 64, 4)


def hide(monkeypatch, name: str, replacement=None) -> None:
    """Make `from metal_kernels.cpu import <name>` give `replacement`, or fail when it is None."""
    monkeypatch.delattr(native, name, raising=False)
    monkeypatch.setitem(sys.modules, f"metal_kernels.cpu.{name}", replacement)
    if replacement is not None:
        monkeypatch.setattr(native, name, replacement, raising=False)


def build_info(built: bool, reason: str = "", mlx_version: str = mx.__version__):
    info = type(sys)("metal_kernels.cpu._build_info")
    info.BUILT, info.SKIP_REASON, info.MLX_VERSION = built, reason, mlx_version
    return info


def test_hidden_module_falls_back(reload_native, monkeypatch, default_model_dir):
    hide(monkeypatch, "_qmm")  # built, then deleted or unloadable
    hide(monkeypatch, "_build_info", build_info(True))
    check_fallback(default_model_dir, "cannot be loaded")


def test_install_without_the_build_step_falls_back(reload_native, monkeypatch, default_model_dir):
    hide(monkeypatch, "_qmm")
    hide(monkeypatch, "_build_info")
    check_fallback(default_model_dir, "not built (reinstall Orchard")


def test_skipped_build_falls_back(reload_native, monkeypatch, default_model_dir):
    hide(monkeypatch, "_build_info", build_info(False, "no C++ compiler was found at install time", ""))
    check_fallback(default_model_dir, "not built at install (no C++ compiler")


def test_module_built_for_another_mlx_is_not_used(reload_native, monkeypatch, default_model_dir):
    hide(monkeypatch, "_build_info", build_info(True, mlx_version="0.0.1"))
    check_fallback(default_model_dir, f"built against MLX 0.0.1 but MLX {mx.__version__} is installed")


def test_kernels_builtin_switches_the_native_op_off(monkeypatch, default_model_dir):
    monkeypatch.setenv("ORCHARD_KERNELS", "builtin")
    assert quantized.choose(1, 1 << 20, 4, 64) == "mlx"
    assert mlxmodels.load_model(default_model_dir, cpu_weights="auto").info.cpu_weights == "fp32"


def cmake_configure(tmp_path: Path, **env) -> str:
    """Configure metal_kernels/cpu as pip would, and return the _build_info.py it writes."""
    import os

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    build = tmp_path / "build"
    result = subprocess.run([cmake, "-S", str(ROOT / "metal_kernels" / "cpu"), "-B", str(build),
                             f"-DPython_EXECUTABLE={sys.executable}"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    assert "Orchard will use MLX's kernels" in " ".join(result.stderr.split())  # CMake wraps its warnings
    return (build / "_build_info.py").read_text()


def test_build_forced_off_configures_cleanly(tmp_path):
    info = cmake_configure(tmp_path, ORCHARD_BUILD_CPU_KERNELS="0")
    assert "BUILT = False" in info and 'SKIP_REASON = "ORCHARD_BUILD_CPU_KERNELS=0 at install time"' in info


def test_build_without_a_compiler_configures_cleanly(tmp_path):
    info = cmake_configure(tmp_path, CXX=str(tmp_path / "no-such-compiler"))
    assert "BUILT = False" in info and "no C++ compiler" in info


def test_arm64_variants_under_qemu(tmp_path):
    """The arm64 variants (NEON, plain C++) built by the cross compiler and run under qemu-aarch64
    against double arithmetic: every bit width, group size and 1-9 rows (tests/cpu_qmm_variants.cpp)."""
    compiler, emulator = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if compiler is None or emulator is None:
        pytest.skip("needs aarch64-linux-gnu-g++ and qemu-aarch64 (Debian: g++-aarch64-linux-gnu, qemu-user)")
    src = ROOT / "metal_kernels" / "cpu"
    binary = tmp_path / "variants"
    build = subprocess.run([compiler, "-std=c++20", "-O2", "-static", "-fopenmp-simd", "-fno-math-errno",
                            "-DORCHARD_HAVE_NEON", f"-I{src}", str(ROOT / "tests" / "cpu_qmm_variants.cpp"),
                            *(str(src / f) for f in ("qmm.cpp", "threads.cpp", "qmm_generic.cpp", "qmm_neon.cpp")),
                            "-o", str(binary), "-lpthread"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    result = subprocess.run([emulator, str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr  # worst error over 1e-6 of sum |x w|
    assert "variants: neon generic" in result.stdout
