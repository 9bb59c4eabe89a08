"""The CPU backend's multiply-add math (mlxmodels/layers/cpu_math.py) against MLX's built-in ops and
float64 NumPy, the RoPE tables against the definition, and the switches that keep GPUs on MLX's ops.

Tolerances: float32 has a 1.19e-7 ulp. The polynomial exp is within about an ulp of the true value
(its truncation error is < 1e-8), so 3e-7 relative; functions built on it (sigmoid, silu, tanh) differ from MLX's
by a few ulps of their output scale. Attention sums S products in another order than MLX's op:
~1e-6 of the output scale.
"""

from __future__ import annotations

import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers import cpu_math_mode

from mlxmodels import allocator
from mlxmodels.cache import window_mask
from mlxmodels.layers import cpu_math
from mlxmodels.layers.rope import RoPE


def test_exp_within_a_few_ulps_over_the_float32_range():
    # Up to e**87: beyond ~e**87.3 the result saturates at 2**126 (documented in cpu_math).
    x = mx.concatenate([mx.linspace(-87.0, 87.0, 200_001), mx.random.normal((10_000,)) * 3])
    ours = np.array(cpu_math.exp(x), dtype=np.float64)
    exact = np.exp(np.array(x, dtype=np.float64))
    assert np.max(np.abs(ours - exact) / exact) < 3e-7


def test_exp_limits():
    big = np.array(cpu_math.exp(mx.array([-mx.inf, -1000.0, -88.0, 0.0, 1000.0, mx.nan])))
    # Underflow is exactly 0 (no denormal products downstream); NaN stays NaN.
    assert big[0] == 0.0 and big[1] == 0.0 and big[2] == 0.0
    assert big[3] == 1.0 and np.isfinite(big[4]) and np.isnan(big[5])


@pytest.mark.parametrize("fast, reference", [
    (cpu_math.sigmoid, mx.sigmoid),
    (cpu_math.tanh, mx.tanh),
])
def test_sigmoid_and_tanh_match_mlx(fast, reference):
    x = mx.random.normal((4096,)) * 8
    assert float(mx.abs(fast(x) - reference(x)).max()) < 1e-6


@pytest.mark.parametrize("fused, act", [
    (cpu_math.silu_mul, nn.silu),
    (cpu_math.gelu_approx_mul, nn.gelu_approx),
])
def test_gated_activations_match_mlx(fused, act):
    mx.random.seed(1)
    gate, up = mx.random.normal((3, 17, 256)) * 4, mx.random.normal((3, 17, 256))
    expected = act(gate) * up
    scale = float(mx.abs(expected).max())
    assert float(mx.abs(fused(gate, up) - expected).max()) < 1e-6 * scale


def _reference_attention(q, k, v, scale, mask, softcap=None):
    """MLX's own op, or its documented math where the op has no soft-capping."""
    if softcap is None:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    groups = q.shape[1] // k.shape[1]
    k, v = mx.repeat(k, groups, axis=1), mx.repeat(v, groups, axis=1)
    scores = mx.tanh((q * scale) @ k.swapaxes(-1, -2) / softcap) * softcap
    if isinstance(mask, str):
        mask = window_mask(k.shape[2], q.shape[2], k.shape[2], None)
    if mask is not None:
        scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
    return mx.softmax(scores, axis=-1, precise=True) @ v


@pytest.mark.parametrize("heads, kv_heads, L, S, mask, softcap", [
    (9, 3, 40, 40, "causal", None),  # prefill, grouped-query heads
    (4, 4, 16, 50, "causal", None),  # a chunk after a cached prefix
    (8, 1, 1, 33, None, None),  # one decode step, multi-query
    (6, 2, 20, 60, "window", None),  # sliding window
    (6, 2, 20, 60, "additive", None),
    (4, 2, 24, 24, "causal", 50.0),  # Gemma 2 style soft-capping
    (4, 2, 1, 24, None, 30.0),
])
def test_attention_matches_mlx(heads, kv_heads, L, S, mask, softcap):
    mx.random.seed(2)
    q = mx.random.normal((2, heads, L, 32))
    k, v = mx.random.normal((2, kv_heads, S, 32)), mx.random.normal((2, kv_heads, S, 32))
    if mask == "window":
        mask = window_mask(S, L, S, 7)
    elif mask == "additive":
        mask = mx.where(window_mask(S, L, S, 9), 0.0, -1e9)
    expected = _reference_attention(q, k, v, 32**-0.5, mask, softcap)
    got = cpu_math.attention(q, k, v, 32**-0.5, mask, softcap)
    assert got.shape == expected.shape
    assert float(mx.abs(got - expected).max()) < 1e-5 * float(mx.abs(expected).max())


def _numpy_rope(x: np.ndarray, offset: int, inv_freq: np.ndarray, dims: int, traditional: bool,
                magnitude: float = 1.0) -> np.ndarray:
    """RoPE by its definition, the angle rounded to float32 as Hugging Face computes it."""
    L = x.shape[-2]
    angles = (np.arange(offset, offset + L, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :])
    cos, sin = np.cos(angles.astype(np.float64)) * magnitude, np.sin(angles.astype(np.float64)) * magnitude
    x = x.astype(np.float64)
    rot, rest = x[..., :dims], x[..., dims:]
    if traditional:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = np.empty_like(rot)
        out[..., 0::2], out[..., 1::2] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    else:
        x1, x2 = rot[..., : dims // 2], rot[..., dims // 2 :]
        out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return np.concatenate([out, rest], axis=-1)


@pytest.mark.parametrize("params, dims, traditional", [
    ({"rope_type": "default", "rope_theta": 10000.0}, 32, False),
    ({"rope_type": "default", "rope_theta": 500000.0}, 32, True),
    ({"rope_type": "default", "rope_theta": 10000.0}, 16, False),  # partial rotary
    ({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, 32, False),
    ({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, 32, False),
    ({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}, 32, False),
])
@pytest.mark.parametrize("offset", [0, 300])  # 300: past the first table (256 rows), so it grows
def test_rope_tables_match_the_definition(params, dims, traditional, offset):
    rope = RoPE(dims, params, 256, traditional)
    mx.random.seed(3)
    x = mx.random.normal((1, 3, 5, 32))
    got = np.array(rope(x, offset=offset))
    inv = np.array(rope._inverse_frequencies())
    expected = _numpy_rope(np.array(x), offset, inv, dims, traditional, rope.magnitude)
    assert np.max(np.abs(got - expected)) < 1e-5
    # And against MLX's op on the other path (its own angle arithmetic: ~1e-5 apart at position 300).
    with cpu_math_mode("mlx"):
        plain = np.array(rope(x, offset=offset))
    assert np.max(np.abs(got - plain)) < 1e-4 * max(1, offset / 100)


def test_fast_path_only_for_float32_on_the_cpu(monkeypatch):
    assert cpu_math.enabled(mx.zeros(2)) and not cpu_math.enabled(mx.zeros(2, dtype=mx.float16))
    monkeypatch.setenv("ORCHARD_CPU_MATH", "mlx")
    assert not cpu_math.enabled()
    monkeypatch.delenv("ORCHARD_CPU_MATH")
    for gpu in ("metal", "cuda"):
        monkeypatch.setattr(cpu_math, "backend_name", lambda gpu=gpu: gpu)
        assert not cpu_math.enabled(mx.zeros(2))


def test_gpu_backends_run_mlx_ops_in_the_model(monkeypatch):
    """Faking a GPU backend: a model's forward pass never reaches the CPU forms (the multiply-add
    versions here, or the native fused operations where they are built)."""
    from helpers import TINY_LLAMA

    from metal_kernels import cpu as native_cpu
    from mlxmodels.models import build_model

    model = build_model(dict(TINY_LLAMA, vocab_size=64))
    calls = []

    def record(owner, name):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))

    for name in ("attention", "silu_mul"):
        record(cpu_math, name)
    if native_cpu.available():
        for name in ("rms_norm", "rope", "decode_attention", "gated_activation"):
            record(native_cpu.module(), name)
    ids = mx.array([[1, 2, 3, 4, 5]])
    model(ids)
    gated = {"gated_activation"} if native_cpu.available() else {"silu_mul"}
    assert {"attention"} | gated <= set(calls)
    calls.clear()
    monkeypatch.setattr(cpu_math, "backend_name", lambda: "metal")
    model(ids)
    assert calls == []


def test_allocator_tuning_rules():
    assert not allocator._tune({}, "darwin")
    assert not allocator._tune({"MALLOC_ARENA_MAX": "2"}, "linux")  # the user's own settings win
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert allocator._tune({}, "linux")


def _thp_mode() -> str:
    """The selected transparent-huge-page mode ("always", "madvise", "never"), "" where unknown."""
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return ""
    chosen = [word for word in text.split() if word.startswith("[")]
    return chosen[0].strip("[]") if chosen else ""


def _huge_kb_of_mapping_at(address: int) -> int:
    """AnonHugePages (kB) of the memory mapping holding `address`, from /proc/self/smaps."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    return 0


def test_huge_page_ranges_merge_neighbours():
    two = allocator.HUGE_PAGE
    assert allocator._merged_ranges([(10 * two, 11 * two), (0, two), (two + 5, 3 * two)], two) == [
        (0, 3 * two), (10 * two, 11 * two)]
    assert allocator._merged_ranges([], two) == []


def test_weights_move_to_huge_pages_where_the_kernel_allows():
    import platform

    a = mx.arange(6 * 1024 * 1024, dtype=mx.float32)  # 24 MB: several whole 2 MB pages inside
    mx.eval(a)
    assert allocator.back_with_huge_pages([a], "darwin") == 0
    if platform.system() != "Linux" or _thp_mode() not in ("always", "madvise"):
        assert allocator.back_with_huge_pages([a]) == 0 or _thp_mode() == ""
        return
    moved = allocator.back_with_huge_pages([a])
    release = tuple(int(p) for p in platform.release().split(".")[:2] if p.isdigit())
    if release >= (6, 1):  # MADV_COLLAPSE: moved now
        assert 16 * 1024 * 1024 <= moved <= a.nbytes
        start = np.asarray(memoryview(a)).ctypes.data
        first_page = -(-start // allocator.HUGE_PAGE) * allocator.HUGE_PAGE  # the advice splits the mapping there
        assert _huge_kb_of_mapping_at(first_page) * 1024 >= moved  # the kernel reports them so
    # The data is the same array's, untouched.
    assert mx.array_equal(a, mx.arange(6 * 1024 * 1024, dtype=mx.float32)).item()


def test_warm_up_runs_the_prefill_and_the_decode_shapes(monkeypatch):
    """`mlxmodels.warm_up` must reach both compiled paths (several queries, then one) so their
    kernels are built before a user waits for an answer."""
    from helpers import TINY_LLAMA

    import mlxmodels
    from mlxmodels.models import build_model

    model = build_model(dict(TINY_LLAMA, vocab_size=64))
    from mlxmodels.layers import ops

    queries = []
    real = ops.attention
    monkeypatch.setattr(ops, "attention", lambda q, *a, **k: queries.append(q.shape[2]) or real(q, *a, **k))
    mlxmodels.warm_up(model)
    assert sorted(set(queries)) == [1, 2]


def _python_calls_in(files: tuple, run) -> int:
    """How many Python functions defined in `files` ran during `run()`. A compiled function's Python
    body runs only when MLX traces it, so a call that reuses a trace adds nothing."""
    count = 0

    def hook(frame, event, arg):
        nonlocal count
        if event == "call" and frame.f_code.co_filename.replace("\\", "/").endswith(files):
            count += 1

    sys.setprofile(hook)
    try:
        run()
    finally:
        sys.setprofile(None)
    return count


def test_new_prefill_lengths_trace_no_new_graphs():
    """A chat prefills a new length every turn and attention sees a new key count: the compiled CPU
    helpers (cpu_math's, RoPE's rotation) must not trace a graph per length, which MLX would keep for
    the life of the process. After a first prefill, 20 other lengths run exactly the Python that a
    repeat of the first runs: no trace at all."""
    from helpers import TINY_LLAMA

    from mlxmodels.models import build_model

    if not cpu_math.enabled(mx.zeros((1,))):
        pytest.skip("the CPU math path is off on this backend")
    model = build_model(dict(TINY_LLAMA, vocab_size=64))
    mx.eval(model.parameters())

    def prefill(L: int):
        return lambda: mx.eval(model(mx.arange(L)[None] % 64, cache=model.make_cache()))

    files = ("layers/cpu_math.py", "layers/rope.py")
    prefill(61)()  # the longest first: RoPE's tables grow to it once
    steady = _python_calls_in(files, prefill(61))
    extra = {L: _python_calls_in(files, prefill(L)) - steady for L in range(41, 61)}
    assert all(n == 0 for n in extra.values()), extra


@pytest.mark.parametrize("name", ["exp", "sigmoid", "tanh", "silu_mul", "gelu_approx_mul"])
def test_every_length_computes_the_same_values(name):
    """One trace serving every length changes no value: each of 20 lengths gives exactly the rows
    the longest input gives."""
    fn = getattr(cpu_math, name)
    mx.random.seed(3)
    inputs = [mx.random.normal((1, 60, 96)) * 6 for _ in range(2 if name.endswith("_mul") else 1)]
    full = fn(*inputs)
    for L in range(40, 60):
        assert mx.array_equal(fn(*(x[:, :L] for x in inputs)), full[:, :L]).item(), L
