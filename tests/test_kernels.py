"""The custom kernels, executed by the CPU emulator, against MLX's built-in ops.

Every case runs the kernel's real Metal source (as MLX would generate it) in three thread orders
under AddressSanitizer/UBSan, so a pass here also means no data race, no out-of-bounds access and
no divergent barrier or simd call for that shape. Shapes are deliberately awkward: N odd, K not a
multiple of the 32-word lane stride, GQA groups, head dim 80 (not a multiple of 32), contexts of
one key and past several flash-decoding splits.

Tolerances are error bounds, not guesses. Both sides accumulate in float32 (unit roundoff
u = 2^-24) in different orders; for a dot product of n terms each side's error is at most
gamma_n * sum|terms| with gamma_n = n * u (Higham, Accuracy and Stability, 3.1), so the two may
differ by twice that. Half-precision outputs add the final rounding: 2^-11 relative (fp16),
2^-8 (bf16). Kernel outputs compared against these bounds are typically 100x inside them.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import metal_kernels as mk

U = 2.0**-24


# On a GPU the same tests run the kernels natively (Metal, or the CUDA twins); on the CPU through
# the emulator.
MODE = "emulate" if mk.backend_name() == "cpu" else "custom"


@pytest.fixture(autouse=True)
def kernel_mode(monkeypatch):
    monkeypatch.setenv("ORCHARD_KERNELS", MODE)


def _builtin(monkeypatch, fn, *args, **kwargs):
    monkeypatch.setenv("ORCHARD_KERNELS", "builtin")
    try:
        return fn(*args, **kwargs)
    finally:
        monkeypatch.setenv("ORCHARD_KERNELS", MODE)


def _quantized(N, K, group_size, bits, seed):
    W = mx.random.normal((N, K), key=mx.random.key(seed))
    w, s, b = mx.quantize(W, group_size=group_size, bits=bits)
    return w, s, b


def _abs_dequant(w, s, b, group_size, bits):
    """|scale| * q + |bias|: the magnitude of every dequantized term, for the error bound."""
    q = mx.dequantize(w, mx.ones_like(s), mx.zeros_like(b), group_size=group_size, bits=bits)
    rep = lambda a: mx.repeat(mx.abs(a), group_size, axis=-1)
    return rep(s) * q + rep(b)


def _dot_bound(x, w, s, b, group_size, bits):
    """2 * gamma_K * (|x| @ |W|^T): how far two float32 evaluations of x @ W^T may differ."""
    K = x.shape[-1]
    return 2 * K * U * (mx.abs(x.astype(mx.float32)) @ _abs_dequant(w, s, b, group_size, bits).T)


# (M, K, N, group_size, bits): every group size with both bit widths, batch 1..8, N odd or prime,
# K = 96 / 160 / 416 so the packed words per row are not a multiple of the 32-lane stride.
MATVEC_CASES = [
    (1, 96, 33, 32, 4),
    (3, 160, 37, 32, 8),
    (8, 128, 17, 64, 4),
    (2, 192, 9, 64, 8),
    (5, 384, 11, 128, 4),
    (1, 256, 7, 128, 8),
    (4, 416, 13, 32, 4),
]


@pytest.mark.parametrize("M,K,N,group_size,bits", MATVEC_CASES)
def test_quantized_matmul_matches_builtin(monkeypatch, M, K, N, group_size, bits):
    x = mx.random.normal((M, K), key=mx.random.key(M * 1000 + K))
    w, s, b = _quantized(N, K, group_size, bits, seed=N)
    y = mk.quantized_matmul(x, w, s, b, group_size, bits)
    ref = _builtin(monkeypatch, mk.quantized_matmul, x, w, s, b, group_size, bits)
    assert y.shape == ref.shape == (M, N)
    err = mx.abs(y - ref)
    assert mx.all(err <= _dot_bound(x, w, s, b, group_size, bits)).item(), err.max().item()


def test_quantized_matmul_keeps_leading_axes(monkeypatch):
    x = mx.random.normal((2, 1, 64), key=mx.random.key(3))
    w, s, b = _quantized(5, 64, 32, 4, seed=4)
    y = mk.quantized_matmul(x, w, s, b, 32, 4)
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=32, bits=4)
    assert y.shape == (2, 1, 5)
    assert mx.all(mx.abs(y - ref) <= _dot_bound(x, w, s, b, 32, 4)).item()


@pytest.mark.parametrize("dtype,rel", [(mx.float16, 2.0**-11), (mx.bfloat16, 2.0**-8)])
def test_quantized_matmul_half_precision_against_float64(dtype, rel):
    # MLX's own CPU kernel accumulates in the input dtype (errors up to ~4e-2 in bf16), so the
    # reference is float64 NumPy on the same half-precision inputs; ours accumulates in float32.
    M, K, N, gs, bits = 2, 160, 19, 32, 4
    x = mx.random.normal((M, K), key=mx.random.key(11)).astype(dtype)
    w, s, b = _quantized(N, K, gs, bits, seed=12)
    s, b = s.astype(dtype), b.astype(dtype)
    y = mk.quantized_matmul(x, w, s, b, gs, bits)
    assert y.dtype == dtype
    W64 = np.array(mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), group_size=gs, bits=bits), dtype=np.float64)
    ref = np.array(x.astype(mx.float32), dtype=np.float64) @ W64.T
    bound = rel * np.abs(ref) + np.array(_dot_bound(x, w, s, b, gs, bits)) + 1e-30
    err = np.abs(np.array(y.astype(mx.float32), dtype=np.float64) - ref)
    assert np.all(err <= bound), float(err.max())


@pytest.mark.parametrize("activation", ["silu", "gelu_approx"])
@pytest.mark.parametrize("M,K,N,group_size,bits", [(1, 96, 21, 32, 4), (3, 256, 11, 64, 8), (8, 384, 5, 128, 4)])
def test_quantized_swiglu_matches_builtin(monkeypatch, activation, M, K, N, group_size, bits):
    x = mx.random.normal((M, K), key=mx.random.key(K + M))
    wg, sg, bg = _quantized(N, K, group_size, bits, seed=1)
    wu, su, bu = _quantized(N, K, group_size, bits, seed=2)
    y = mk.quantized_swiglu(x, wg, sg, bg, wu, su, bu, group_size, bits, activation=activation)
    ref = _builtin(monkeypatch, mk.quantized_swiglu, x, wg, sg, bg, wu, su, bu, group_size, bits, activation=activation)
    # Errors dg, du in the two products propagate as |act'(g)| dg |u| + |act(g)| du, with
    # |act'| <= 1.13 for both SiLU and tanh-GELU; plus a few roundings in the epilogue itself.
    gate = mx.quantized_matmul(x, wg, sg, bg, transpose=True, group_size=group_size, bits=bits)
    up = mx.quantized_matmul(x, wu, su, bu, transpose=True, group_size=group_size, bits=bits)
    act = nn.silu(gate) if activation == "silu" else nn.gelu_approx(gate)
    bound = (1.13 * _dot_bound(x, wg, sg, bg, group_size, bits) * mx.abs(up)
             + mx.abs(act) * _dot_bound(x, wu, su, bu, group_size, bits) + 16 * U * mx.abs(ref))
    err = mx.abs(y - ref)
    assert mx.all(err <= bound).item(), err.max().item()


def _attention_bound(q, k, v, scale):
    """max|v| * (2 max|ds| + 2 gamma_S + 8u), where ds <= 2 gamma_D sum_d |q_d k_d| * scale is how far
    two float32 scores may differ: softmax weights move by at most p_j (|ds_j| + max|ds|), so the
    output by at most 2 max|ds| max|v|; its own sum over S keys adds gamma_S max|v|, exp a few u."""
    D, S = q.shape[-1], k.shape[2]
    G = q.shape[1] // k.shape[1]
    kk = mx.repeat(mx.abs(k), G, axis=1)
    ds = 2 * D * U * scale * (mx.abs(q) @ kk.swapaxes(-1, -2)).max().item()
    return mx.abs(v).max().item() * (2 * ds + 2 * S * U + 8 * U)


# (B, Hq, Hkv, Lq, S, D, window, chunk): GQA 1/4/8, head dims 64/80/128, one key up to several
# splits of `chunk` keys, windows smaller than a split and spanning splits, several new tokens.
ATTENTION_CASES = [
    (1, 2, 2, 1, 1, 64, None, 32),
    (1, 8, 2, 1, 100, 80, None, 32),
    (2, 8, 1, 2, 45, 128, None, 64),
    (1, 4, 4, 3, 70, 64, 20, 32),
    (1, 8, 1, 1, 129, 80, 50, 32),
    (1, 16, 2, 2, 33, 64, None, 16),
]


@pytest.mark.parametrize("B,Hq,Hkv,Lq,S,D,window,chunk", ATTENTION_CASES)
def test_decode_attention_matches_sdpa(monkeypatch, B, Hq, Hkv, Lq, S, D, window, chunk):
    keys = mx.random.split(mx.random.key(S * 7 + D), 3)
    q = mx.random.normal((B, Hq, Lq, D), key=keys[0])
    k = mx.random.normal((B, Hkv, S, D), key=keys[1])
    v = mx.random.normal((B, Hkv, S, D), key=keys[2])
    scale = 1 / math.sqrt(D)
    out = mk.decode_attention(q, k, v, scale, window=window, chunk=chunk)
    ref = _builtin(monkeypatch, mk.decode_attention, q, k, v, scale, window=window)
    assert out.shape == ref.shape == (B, Hq, Lq, D)
    err = mx.abs(out - ref).max().item()
    assert err <= _attention_bound(q, k, v, scale), err


@pytest.mark.parametrize("bits,group_size,Hq,Hkv,Lq,S,D,window", [
    (8, 64, 8, 2, 1, 70, 64, None),
    (4, 32, 4, 1, 2, 90, 128, None),
    (4, 128, 8, 8, 1, 40, 128, 16),
])
def test_quantized_kv_attention_matches_dequantized_sdpa(monkeypatch, bits, group_size, Hq, Hkv, Lq, S, D, window):
    keys = mx.random.split(mx.random.key(bits * 100 + S), 3)
    q = mx.random.normal((1, Hq, Lq, D), key=keys[0])
    k = mx.random.normal((1, Hkv, S, D), key=keys[1])
    v = mx.random.normal((1, Hkv, S, D), key=keys[2])
    kq = mx.quantize(k, group_size=group_size, bits=bits)
    vq = mx.quantize(v, group_size=group_size, bits=bits)
    scale = 1 / math.sqrt(D)
    out = mk.quantized_decode_attention(q, kq, vq, scale, group_size=group_size, bits=bits, window=window, chunk=32)
    # The reference is MLX's dequantize + fused SDPA; the bound is the float one on the dequantized
    # cache (both sides dequantize with one fp32 multiply-add, within a rounding of each other).
    ref = _builtin(monkeypatch, mk.quantized_decode_attention, q, kq, vq, scale, group_size=group_size, bits=bits,
                   window=window)
    kf = mx.dequantize(*kq, group_size=group_size, bits=bits)
    vf = mx.dequantize(*vq, group_size=group_size, bits=bits)
    err = mx.abs(out - ref).max().item()
    assert err <= _attention_bound(q, kf, vf, scale) * 2, err


def test_attention_in_half_precision(monkeypatch):
    keys = mx.random.split(mx.random.key(5), 3)
    q = mx.random.normal((1, 4, 1, 64), key=keys[0]).astype(mx.float16)
    k = mx.random.normal((1, 1, 40, 64), key=keys[1]).astype(mx.float16)
    v = mx.random.normal((1, 1, 40, 64), key=keys[2]).astype(mx.float16)
    out = mk.decode_attention(q, k, v, 0.125, chunk=16)
    # float64 reference on the same fp16 inputs; the kernel computes in fp32 and rounds once.
    q64, k64, v64 = (np.array(t.astype(mx.float32), dtype=np.float64) for t in (q, k, v))
    s = q64[0, :, 0] @ k64[0, 0].T * 0.125  # one KV head serves all 4 query heads
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = (p @ v64[0, 0])[None, :, None, :]
    err = np.abs(np.array(out.astype(mx.float32), dtype=np.float64) - ref)
    assert out.dtype == mx.float16
    assert np.all(err <= 2.0**-11 * np.abs(ref) + 1e-4), float(err.max())


def test_composed_kernels_in_one_graph_stay_correct(monkeypatch):
    # MLX #3347 reports a use-after-free when several custom kernels share one lazy graph: chain
    # matvec -> swiglu -> matvec -> attention and check the final result against the built-in chain.
    # (The emulator runs each launch eagerly; the graph hazard itself exists only natively, where
    # ORCHARD_KERNELS=custom runs this same test through Metal or CUDA.)
    K, N = 64, 64
    x = mx.random.normal((2, K), key=mx.random.key(21))
    w1, s1, b1 = _quantized(N, K, 32, 4, seed=22)
    w2, s2, b2 = _quantized(N, N, 32, 4, seed=23)

    def chain():
        h = mk.quantized_matmul(x, w1, s1, b1, 32, 4)
        h = mk.quantized_swiglu(h, w2, s2, b2, w2, s2, b2, 32, 4)
        h = mk.quantized_matmul(h, w2, s2, b2, 32, 4)
        q = h.reshape(1, 2, 1, 64)
        kv = mx.concatenate([q, q * 0.5, -q], axis=2)[:, :1]
        return mk.decode_attention(q, kv, kv, 0.125, chunk=2)

    out = chain()
    ref = _builtin(monkeypatch, chain)
    # Values grow to ~1e4 through the random layers; four float32 stages of K=64 terms each differ by
    # at most ~2*64*u = 7.6e-6 of the magnitudes involved, so 1e-4 of the largest output is ample.
    err = mx.abs(out - ref).max().item()
    assert err <= 1e-4 * mx.abs(ref).max().item(), err


@pytest.mark.skipif(MODE != "emulate", reason="the CPU backend's fallback")
def test_builtin_mode_and_cpu_default_use_mlx_ops(monkeypatch):
    x = mx.random.normal((1, 64), key=mx.random.key(1))
    w, s, b = _quantized(3, 64, 64, 4, seed=2)
    ref = mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64, bits=4)
    for mode in ("builtin", "auto", "custom"):  # on the CPU backend all three are the built-in op
        monkeypatch.setenv("ORCHARD_KERNELS", mode)
        assert mx.array_equal(mk.quantized_matmul(x, w, s, b, 64, 4), ref).item()
    monkeypatch.setenv("ORCHARD_KERNELS", "fastest")
    with pytest.raises(ValueError, match="ORCHARD_KERNELS='fastest'"):
        mk.quantized_matmul(x, w, s, b, 64, 4)


def test_bad_quantization_arguments_are_named():
    x = mx.zeros((1, 64))
    w, s, b = _quantized(3, 64, 64, 4, seed=2)
    with pytest.raises(ValueError, match="bits must be 4 or 8, got 3"):
        mk.quantized_matmul(x, w, s, b, 64, 3)
    with pytest.raises(ValueError, match="x has 64 features"):
        mk.quantized_matmul(x, w, s, b, 32, 4)
    with pytest.raises(ValueError, match="window must be at least 1"):
        mk.decode_attention(mx.zeros((1, 1, 1, 64)), mx.zeros((1, 1, 4, 64)), mx.zeros((1, 1, 4, 64)), 1.0, window=0)


def test_random_shapes_sweep(monkeypatch):
    # Seeded random draws over the ranges the kernels claim (batch 1-8, any N, K a multiple of the
    # group, GQA 1/2/4/8, D 32-128 in steps of 16, 1-3 new tokens, contexts up to 3 splits, random
    # windows), on top of the hand-picked awkward cases above.
    rng = np.random.default_rng(7)
    for _ in range(4):
        gs, bits = int(rng.choice([32, 64, 128])), int(rng.choice([4, 8]))
        M, N, K = int(rng.integers(1, 9)), int(rng.integers(4, 40)), gs * int(rng.integers(1, 6))
        x = mx.random.normal((M, K), key=mx.random.key(int(rng.integers(1 << 30))))
        w, s, b = _quantized(N, K, gs, bits, seed=int(rng.integers(1 << 30)))
        y = mk.quantized_matmul(x, w, s, b, gs, bits)
        ref = _builtin(monkeypatch, mk.quantized_matmul, x, w, s, b, gs, bits)
        assert mx.all(mx.abs(y - ref) <= _dot_bound(x, w, s, b, gs, bits)).item(), (M, N, K, gs, bits)
    for _ in range(4):
        Hkv, G = int(rng.choice([1, 2])), int(rng.choice([1, 2, 4, 8]))
        Lq = int(rng.integers(1, 16 // G + 1)) if G < 8 else int(rng.integers(1, 3))
        D, S = 16 * int(rng.integers(2, 9)), int(rng.integers(Lq, 97))
        window = None if rng.random() < 0.5 else int(rng.integers(1, S + 1))
        keys = mx.random.split(mx.random.key(int(rng.integers(1 << 30))), 3)
        q = mx.random.normal((1, Hkv * G, Lq, D), key=keys[0])
        k = mx.random.normal((1, Hkv, S, D), key=keys[1])
        v = mx.random.normal((1, Hkv, S, D), key=keys[2])
        out = mk.decode_attention(q, k, v, 0.1, window=window, chunk=32)
        ref = _builtin(monkeypatch, mk.decode_attention, q, k, v, 0.1, window=window)
        err = mx.abs(out - ref).max().item()
        assert err <= _attention_bound(q, k, v, 0.1), (Hkv, G, Lq, D, S, window, err)


def test_timing_harness_runs_each_path_and_measures_their_difference():
    """metal_kernels.timing (the GPU timing tool) times and compares the custom path against the
    built-in one: here the emulated kernel, which must agree; and a call that answers differently
    per mode, which the reported difference must show (so the harness really switches modes)."""
    from metal_kernels import timing

    emulated = timing.run_case(timing.matvec_case(2, 33, 96, 4, 32, mx.float32), custom_mode="emulate",
                               calls=2, trials=1)
    assert emulated.builtin_us > 0 and emulated.custom_us > 0
    assert emulated.max_rel_diff < 1e-5

    def mode_dependent(x):
        return x + (1.0 if mk.kernel_mode() == "emulate" else 0.0)

    case = timing.Case("mode dependent", lambda seed: (mx.ones((4,)) * 3,), mode_dependent)
    assert timing.run_case(case, custom_mode="emulate", calls=1, trials=1).max_rel_diff == pytest.approx(1 / 3)
    assert "| mode dependent |" in timing.format_table([timing.run_case(case, "emulate", 1, 1)])
    if mk.backend_name() == "cpu":
        assert timing.main([]) == 2  # the tool says it needs a GPU backend


def test_auto_mode_runs_the_custom_kernels_only_where_timings_chose_them(monkeypatch):
    from metal_kernels import ops

    monkeypatch.setenv("ORCHARD_KERNELS", "auto")
    monkeypatch.setattr(ops, "backend_name", lambda: "cuda")  # built-ins won every H200 timing
    assert ops._target() is None and ops._target(auto_custom_on=("metal",)) is None
    monkeypatch.setattr(ops, "backend_name", lambda: "metal")  # quantized-cache attention only
    assert ops._target() is None and ops._target(auto_custom_on=("metal",)) == "metal"
    monkeypatch.setenv("ORCHARD_KERNELS", "custom")
    assert ops._target() == "metal"
    monkeypatch.setattr(ops, "backend_name", lambda: "cpu")
    assert ops._target(auto_custom_on=("metal",)) is None
