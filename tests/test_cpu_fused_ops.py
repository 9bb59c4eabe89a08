"""The native fused CPU operations (metal_kernels/cpu/fused.cpp) against MLX's own ops, and the load-time
joining of sibling projections (mlxmodels/fuse.py) against the unjoined model.

Tolerances: every op computes in float32 like its MLX counterpart but sums in another order (SIMD
lanes) and, for softmax and the gated activations, with cpu_math's exp (within ~1e-7 relative);
inputs are unit-scale normals, so 1e-5 absolute is a few float32 ulps of the largest value. RoPE
is compared with `mx.fast.rope`, whose own angle arithmetic differs from the tables' by ~1e-6 at
these positions."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from metal_kernels import cpu as native_cpu

pytestmark = pytest.mark.skipif(not native_cpu.available(), reason="the native CPU op is not built")

TOL = 1e-5


def _max_diff(a: mx.array, b: mx.array) -> float:
    return float(np.max(np.abs(np.array(a) - np.array(b))))


@pytest.fixture
def ops():
    return native_cpu.module()


@pytest.mark.parametrize("shape", [(1, 1, 576), (3, 5, 640), (2, 7, 33)])
@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm_matches_mlx(ops, shape, weighted):
    x = mx.random.normal(shape, key=mx.random.key(1)) * 3
    w = mx.random.normal(shape[-1:], key=mx.random.key(2)) if weighted else None
    assert _max_diff(ops.rms_norm(x, w, 1e-5), mx.fast.rms_norm(x, w, 1e-5)) < TOL


@pytest.mark.parametrize("shape", [(1, 1, 576), (3, 5, 640)])
@pytest.mark.parametrize("weighted", [True, False])
def test_add_rms_norm_gives_the_add_and_the_norm_of_it(ops, shape, weighted):
    x = mx.random.normal(shape, key=mx.random.key(21)) * 3
    delta = mx.random.normal(shape, key=mx.random.key(22))
    w = mx.random.normal(shape[-1:], key=mx.random.key(23)) if weighted else None
    h, normed = ops.add_rms_norm(x, delta, w, 1e-5)
    assert _max_diff(h, x + delta) == 0.0  # the same float32 add
    assert _max_diff(normed, mx.fast.rms_norm(x + delta, w, 1e-5)) < TOL
    assert _max_diff(normed, ops.rms_norm(x + delta, w, 1e-5)) == 0.0  # the separate op's result, to the bit
    with pytest.raises(ValueError, match="must have one shape"):
        ops.add_rms_norm(x, delta[..., :-1], None, 1e-5)


def test_rms_norm_reads_strided_views(ops):
    x = mx.random.normal((2, 7, 4, 64), key=mx.random.key(3)).transpose(0, 2, 1, 3)
    assert _max_diff(ops.rms_norm(x, None, 1e-6), mx.fast.rms_norm(x, None, 1e-6)) < TOL
    wide = mx.random.normal((3, 16), key=mx.random.key(4)).T  # strided along the last axis: copied first
    assert _max_diff(ops.rms_norm(wide, None, 1e-6), mx.fast.rms_norm(wide, None, 1e-6)) < TOL


def _tables(dims: int, positions: int, traditional: bool, base: float = 10000.0):
    inverse = 1.0 / (base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims))
    angles = mx.arange(positions, dtype=mx.float32)[:, None] * inverse[None]
    c, s = mx.cos(angles), mx.sin(angles)
    if traditional:
        return mx.stack([c, c], -1).reshape(positions, dims), mx.stack([-s, s], -1).reshape(positions, dims)
    return mx.concatenate([c, c], -1), mx.concatenate([-s, s], -1)


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dims", [64, 32])  # 32 of 64: partial rotary, the rest copied
def test_rope_matches_mlx_fast_rope(ops, traditional, dims):
    x = mx.random.normal((2, 4, 3, 64), key=mx.random.key(5))
    cos, sin = _tables(dims, 64, traditional)
    got = ops.rope(x, cos, sin, mx.array([17], mx.int32), dims, traditional)
    want = mx.fast.rope(x, dims, traditional=traditional, base=10000.0, scale=1.0, offset=17)
    assert _max_diff(got, want) < TOL
    # One start position per batch row (a batch decoding together).
    got = ops.rope(x, cos, sin, mx.array([3, 20], mx.int32), dims, traditional)
    want = mx.concatenate([mx.fast.rope(x[i : i + 1], dims, traditional=traditional, base=10000.0, scale=1.0,
                                        offset=o) for i, o in enumerate([3, 20])])
    assert _max_diff(got, want) < TOL


def test_rope_past_its_tables_is_nan_not_wrong(ops):
    x = mx.ones((1, 1, 2, 8))
    cos, sin = _tables(8, 4, False)
    out = np.array(ops.rope(x, cos, sin, mx.array([3], mx.int32), 8, False))
    assert np.all(np.isfinite(out[..., 0, :])) and np.all(np.isnan(out[..., 1, :]))


@pytest.mark.parametrize("shape", [(1, 3, 3, 37, 37), (2, 4, 130, 301), (5, 16), (7, 1)])
def test_softmax_matches_mlx(ops, shape):
    """Rows of every length against the 16-wide loop; -inf (masked) scores weigh exactly 0; with a
    key offset, the causal mask applied by the op itself equals an explicit one."""
    x = mx.random.normal(shape, key=mx.random.key(12)) * 4
    assert _max_diff(ops.softmax(x), mx.softmax(x, axis=-1)) < TOL
    masked = mx.where(mx.random.uniform(shape=shape, key=mx.random.key(13)) > 0.7, -mx.inf, x)
    masked = mx.concatenate([x[..., :1], masked[..., 1:]], axis=-1)  # every row keeps one key
    got = ops.softmax(masked)
    assert _max_diff(got, mx.softmax(masked, axis=-1)) < TOL
    assert bool(mx.all(mx.where(masked == -mx.inf, got == 0, True)))
    if len(shape) >= 2:
        L, S = shape[-2:]
        for offset in {S - L, 0, S - 1} - {o for o in (S - L,) if o < 0}:
            allowed = mx.arange(S)[None, :] <= mx.arange(L)[:, None] + offset
            want = mx.softmax(mx.where(allowed, x, -mx.inf), axis=-1)
            assert _max_diff(ops.softmax(x, offset), want) < TOL, offset


def test_softmax_weights_stay_clear_of_denormals(ops):
    """Scores far below their row's maximum weigh exactly 0, not ~1e-38: products of such weights
    with values are denormal floats, which the CPU computes ~100x slower."""
    x = mx.array([[0.0, -87.5, -200.0, -mx.inf] + [-100.0] * 20])
    got = np.array(ops.softmax(x))
    assert got[0, 0] == 1.0 and np.all(got[0, 1:] == 0.0)


# Head sizes cover the kernel's 64-, 16- and 1-wide loops (72 = 64 + 8); lengths its 16-key blocks and
# tails; query heads per KV head (1-8) its weighted sums for four heads at once and the 1-3 left over,
# and 71 (Falcon-7B's multi-query attention) its passes of at most 64 heads.
@pytest.mark.parametrize("B,H,H_kv,S,D", [(1, 9, 3, 37, 64), (3, 8, 8, 5, 32), (2, 12, 4, 300, 128),
                                          (1, 4, 1, 1, 256), (2, 6, 2, 48, 72), (1, 2, 2, 17, 8),
                                          (2, 14, 2, 40, 64), (1, 8, 1, 33, 128), (1, 10, 2, 16, 64),
                                          (1, 71, 1, 21, 64)])
@pytest.mark.parametrize("kv_dtype", [mx.float32, mx.float16])
def test_decode_attention_matches_mlx(ops, B, H, H_kv, S, D, kv_dtype):
    key = mx.random.key(B * 1000 + S)
    q = mx.random.normal((B, H, 1, D), key=key)
    # Keys and values as a cache hands them back: the first S positions of a longer buffer (a view).
    k = mx.random.normal((B, H_kv, S + 10, D), key=mx.random.key(7))[:, :, :S].astype(kv_dtype)
    v = mx.random.normal((B, H_kv, S + 10, D), key=mx.random.key(8))[:, :, :S].astype(kv_dtype)

    def reference(q, k, v, **kwargs):  # float16 keys and values widen exactly: the same float32 sums
        return mx.fast.scaled_dot_product_attention(q, k.astype(mx.float32), v.astype(mx.float32), **kwargs)
    assert _max_diff(ops.decode_attention(q, k, v, 0.125), reference(q, k, v, scale=0.125)) < TOL
    allowed = mx.random.uniform(shape=(B, 1, 1, S), key=mx.random.key(9)) > 0.3
    allowed = mx.concatenate([mx.ones((B, 1, 1, 1), mx.bool_), allowed[..., 1:]], axis=-1)
    got = ops.decode_attention(q, k, v, 0.125, allowed)
    assert _max_diff(got, reference(q, k, v, scale=0.125, mask=allowed)) < TOL
    additive = mx.random.normal((S,), key=mx.random.key(10))
    got = ops.decode_attention(q, k, v, 0.125, additive)
    assert _max_diff(got, reference(q, k, v, scale=0.125, mask=additive)) < TOL
    sinks = mx.random.normal((H,), key=mx.random.key(11))
    got = ops.decode_attention(q, k, v, 0.125, None, sinks)
    assert _max_diff(got, reference(q, k, v, scale=0.125, sinks=sinks)) < TOL
    # Flat: shaped [B, 1, H * Dv] as the output projection reads it, the same values.
    flat = ops.decode_attention(q, k, v, 0.125, allowed, flat=True)
    assert flat.shape == (B, 1, H * D)
    assert _max_diff(flat, reference(q, k, v, scale=0.125, mask=allowed).reshape(B, 1, H * D)) < TOL


@pytest.fixture
def two_threads(ops):
    before = ops.threads()
    native_cpu.set_threads(2)
    yield
    native_cpu.set_threads(before)


# Few (row, KV head) pairs for two threads over many keys: each pair's keys are split in chunks
# (flash-decoding) whose partial softmaxes are combined after: 4 chunks of one KV head, 2 of three KV
# heads, 2 per row with a 257th key alone in its block.
@pytest.mark.parametrize("B,H,H_kv,S,D", [(1, 4, 1, 700, 64), (1, 9, 3, 300, 64), (2, 2, 1, 257, 32)])
@pytest.mark.parametrize("kv_dtype", [mx.float32, mx.float16])
def test_decode_attention_splits_long_keys_over_threads(ops, two_threads, B, H, H_kv, S, D, kv_dtype):
    q = mx.random.normal((B, H, 1, D), key=mx.random.key(S))
    k = (mx.random.normal((B, H_kv, S, D), key=mx.random.key(1)) * 2).astype(kv_dtype)
    v = mx.random.normal((B, H_kv, S, D), key=mx.random.key(2)).astype(kv_dtype)

    def reference(**kwargs):
        return mx.fast.scaled_dot_product_attention(q, k.astype(mx.float32), v.astype(mx.float32), scale=0.125,
                                                    **kwargs)

    assert _max_diff(ops.decode_attention(q, k, v, 0.125), reference()) < TOL
    # Keys visible only in the first chunk (the others' partials weigh nothing), then scattered.
    early = (mx.arange(S) < 40).reshape(1, 1, 1, S)
    assert _max_diff(ops.decode_attention(q, k, v, 0.125, early), reference(mask=early)) < TOL
    scattered = mx.random.uniform(shape=(B, 1, 1, S), key=mx.random.key(3)) > 0.5
    assert _max_diff(ops.decode_attention(q, k, v, 0.125, scattered), reference(mask=scattered)) < TOL
    sinks = mx.random.normal((H,), key=mx.random.key(4)) * 3
    assert _max_diff(ops.decode_attention(q, k, v, 0.125, None, sinks), reference(sinks=sinks)) < TOL
    additive = mx.random.normal((S,), key=mx.random.key(5))
    got = ops.decode_attention(q, k, v, 0.125, additive, sinks)
    assert _max_diff(got, reference(mask=additive, sinks=sinks)) < TOL


@pytest.mark.parametrize("additive", [False, True])
def test_decode_attention_skips_a_rows_padding(ops, additive):
    """A batch cache pads shorter rows to the longest (masked on the left, and on the right after a
    verification pass): those columns are not read at all. NaN there would poison any product with a
    zero weight, so each row matching attention over its own columns alone proves they were skipped."""
    B, H, H_kv, S, D = 4, 6, 2, 70, 64
    spans = [(0, 70), (23, 70), (40, 61), (69, 70)]
    q = mx.random.normal((B, H, 1, D), key=mx.random.key(1))
    k = np.array(mx.random.normal((B, H_kv, S, D), key=mx.random.key(2)))
    v = np.array(mx.random.normal((B, H_kv, S, D), key=mx.random.key(3)))
    visible = np.zeros((B, 1, 1, S), dtype=bool)
    for b, (first, last) in enumerate(spans):
        k[b, :, :first] = k[b, :, last:] = np.nan
        v[b, :, :first] = v[b, :, last:] = np.nan
        visible[b, ..., first:last] = True
    mask = mx.where(mx.array(visible), 0.0, -mx.inf) if additive else mx.array(visible)
    got = ops.decode_attention(q, mx.array(k), mx.array(v), 0.125, mask)
    for b, (first, last) in enumerate(spans):
        alone = mx.fast.scaled_dot_product_attention(q[b : b + 1], mx.array(k[b : b + 1, :, first:last]),
                                                     mx.array(v[b : b + 1, :, first:last]), scale=0.125)
        assert _max_diff(got[b : b + 1], alone) < TOL, (b, first, last)


# Every float16 value class: zeros, subnormals (the smallest and largest), normals from the smallest
# to 65504, and the infinities and a NaN.
SPECIAL_HALVES = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x3C00, 0xBC00, 0x3555, 0x7BFF, 0xFBFF,
                  0x1234, 0xC000, 0x7C00, 0xFC00, 0x7E00]


@pytest.fixture(params=native_cpu.variants() if native_cpu.available() else [])
def widening(request):
    """Each instruction-set variant this CPU runs, in turn: float16 keys and values are widened by
    the variant's instruction (AVX-512F, F16C) or, for the others, by portable bit arithmetic."""
    before = native_cpu.module().variant()
    native_cpu.set_variant(request.param)
    yield request.param
    native_cpu.set_variant(before)


def test_decode_attention_widens_every_float16_exactly(ops, widening):
    """With one key per head the weight is exactly 1: the output is that value row, so every float16
    (subnormals, 65504, infinities, NaN) must come out as the float32 it stands for. Then keys and values
    against MLX's attention: 37 keys of D = 40 (16-key blocks, a key tail, 16-wide loops and a D tail),
    and 48 keys of D = 64 (the four-heads-at-once weighted sums)."""
    values = np.array(SPECIAL_HALVES * 3, dtype=np.uint16).view(np.float16).reshape(1, 1, 1, 48)
    q = mx.ones((1, 2, 1, 48))
    got = np.array(ops.decode_attention(q, mx.zeros((1, 1, 1, 48), mx.float16), mx.array(values), 0.125))
    want = np.broadcast_to(values.astype(np.float32)[0, 0], (2, 48))
    assert np.array_equal(got[0, :, 0], want, equal_nan=True)
    S, D = 37, 40
    k = mx.random.normal((2, 2, S, D), key=mx.random.key(3)).astype(mx.float16)
    v = mx.random.normal((2, 2, S, D), key=mx.random.key(4)).astype(mx.float16)
    q = mx.random.normal((2, 6, 1, D), key=mx.random.key(5))
    want = mx.fast.scaled_dot_product_attention(q, k.astype(mx.float32), v.astype(mx.float32), scale=0.3)
    assert _max_diff(ops.decode_attention(q, k, v, 0.3), want) < TOL
    k = mx.random.normal((1, 1, 48, 64), key=mx.random.key(6)).astype(mx.float16)
    q = mx.random.normal((1, 3, 1, 64), key=mx.random.key(7))
    want = mx.fast.scaled_dot_product_attention(q, k.astype(mx.float32), k.astype(mx.float32), scale=0.125)
    assert _max_diff(ops.decode_attention(q, k, k, 0.125), want) < TOL


@pytest.mark.parametrize("shape", [(1, 49152), (8, 49152), (3, 5, 37), (2, 1), (16,)])
def test_argmax_matches_mlx(ops, shape):
    x = mx.random.normal(shape, key=mx.random.key(12))
    assert np.array_equal(np.array(ops.argmax(x)), np.array(mx.argmax(x, axis=-1)))
    assert ops.argmax(x).dtype == mx.uint32


def test_argmax_breaks_ties_and_treats_nan_as_mlx_does(ops):
    nan, inf = float("nan"), float("inf")
    rows = [[1.0, 3.0, 3.0, 2.0], [-inf] * 4, [1.0, inf, 2.0, inf], [1.0, nan, 3.0, nan], [nan, 0.0, 5.0, 1.0]]
    for row in rows:  # each as a row of its own and hidden in a long row (the 16-lane loop and the tail)
        for x in (mx.array(row), mx.array([-inf] * 37 + row + [-inf] * 20)):
            assert ops.argmax(x).item() == mx.argmax(x).item(), row
    wide = mx.random.normal((40, 3), key=mx.random.key(13)).T  # strided along its last axis: copied first
    assert np.array_equal(np.array(ops.argmax(wide)), np.array(mx.argmax(wide, axis=-1)))


def test_bad_shapes_are_named(ops):
    q, k = mx.zeros((1, 4, 1, 8)), mx.zeros((1, 3, 5, 8))
    with pytest.raises(ValueError, match="shapes do not match"):
        ops.decode_attention(q, k, k, 1.0)
    with pytest.raises(ValueError, match="k and v must both be float32 or both"):
        ops.decode_attention(mx.zeros((1, 2, 1, 8)), k, k.astype(mx.float16), 1.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        ops.decode_attention(q, mx.zeros((1, 2, 5, 8)), mx.zeros((1, 2, 5, 8)), 1.0, mx.zeros((1, 4, 1, 5), mx.bool_))
    with pytest.raises(ValueError, match="weight"):
        ops.rms_norm(mx.zeros((2, 8)), mx.zeros((7,)), 1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1536), (3, 511, 1536), (2, 7, 33)])
def test_gated_activations_match_mlx(ops, shape):
    gate = mx.random.normal(shape, key=mx.random.key(12)) * 4
    up = mx.random.normal(shape, key=mx.random.key(13))
    silu = gate * mx.sigmoid(gate) * up
    # Relative: silu's products reach ~10 here, and the exp is cpu_math's (1e-7 relative).
    scale = float(np.max(np.abs(np.array(silu)))) + 1
    assert _max_diff(ops.gated_activation(gate, up, 0), silu) < TOL * scale
    assert _max_diff(ops.gated_activation(gate, up, 1), nn.gelu_approx(gate) * up) < TOL * scale


def test_gated_activation_reads_the_halves_of_a_joined_projection(ops):
    joined = mx.random.normal((2, 3, 64), key=mx.random.key(14))
    gate, up = mx.split(joined, 2, axis=-1)
    assert _max_diff(ops.gated_activation(gate, up, 0), nn.silu(gate) * up) < TOL


def test_gated_activation_takes_a_joined_projection_whole(ops):
    """With no `up`, the last axis is [gate | up]: the MLP's joined projection needs no split."""
    joined = mx.random.normal((2, 3, 64), key=mx.random.key(15)) * 3
    gate, up = mx.split(joined, 2, axis=-1)
    assert ops.gated_activation(joined, None, 0).shape == (2, 3, 32)
    assert _max_diff(ops.gated_activation(joined, None, 0), nn.silu(gate) * up) < TOL * 10
    assert _max_diff(ops.gated_activation(joined, None, 1), nn.gelu_approx(gate) * up) < TOL * 10
    with pytest.raises(ValueError, match="even last axis"):
        ops.gated_activation(mx.zeros((2, 7)), None, 0)


def _heads_by_mlx(x, heads, kv_heads, offsets, dims, traditional):
    """The general path rotated_heads replaces: split, heads first, mx.fast.rope per row."""
    B, L, width = x.shape
    D = width // (heads + 2 * kv_heads)
    q, k, v = mx.split(x, [heads * D, (heads + kv_heads) * D], axis=-1)
    q, k, v = (t.reshape(B, L, n, D).transpose(0, 2, 1, 3) for t, n in ((q, heads), (k, kv_heads), (v, kv_heads)))

    def rope(t):
        return mx.concatenate([mx.fast.rope(t[i : i + 1], dims, traditional=traditional, base=10000.0, scale=1.0,
                                            offset=offsets[i if len(offsets) > 1 else 0]) for i in range(B)])

    return rope(q), rope(k), v


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dims", [64, 32])  # 32 of 64: partial rotary, the rest copied
@pytest.mark.parametrize("L, offsets", [(1, [9]), (1, [0, 40, 7]), (5, [3]), (4, [2, 30, 11])])
def test_rotated_heads_match_split_and_mlx_fast_rope(ops, traditional, dims, L, offsets):
    B = 3
    x = mx.random.normal((B, L, (9 + 2 * 3) * 64), key=mx.random.key(16))
    cos, sin = _tables(dims, 64, traditional)
    got = ops.rotated_heads(x, cos, sin, mx.array(offsets, mx.int32), 9, 3, dims, traditional)
    want = _heads_by_mlx(x, 9, 3, offsets, dims, traditional)
    assert [t.shape for t in got] == [(B, 9, L, 64), (B, 3, L, 64), (B, 3, L, 64)]
    assert _max_diff(got[0], want[0]) < TOL and _max_diff(got[1], want[1]) < TOL
    assert _max_diff(got[2], want[2]) == 0.0  # v is copied


def test_rotated_heads_checks_its_inputs(ops):
    cos, sin = _tables(8, 4, False)
    with pytest.raises(ValueError, match=r"\[B, L, \(heads \+ 2 kv_heads\) D\]"):
        ops.rotated_heads(mx.zeros((1, 1, 30)), cos, sin, mx.array([0], mx.int32), 2, 1, 8, False)
    with pytest.raises(ValueError, match="offsets"):
        ops.rotated_heads(mx.zeros((2, 1, 32)), cos, sin, mx.array([0, 1, 2], mx.int32), 2, 1, 8, False)
    # Past the tables: q and k NaN (a sizing mistake made loud), v still copied.
    x = mx.ones((1, 1, 32))
    q, k, v = (np.array(t) for t in ops.rotated_heads(x, cos, sin, mx.array([4], mx.int32), 2, 1, 8, False))
    assert np.all(np.isnan(q)) and np.all(np.isnan(k)) and np.all(v == 1.0)


def test_joined_projections_compute_what_the_separate_ones_do(tmp_path):
    """A 4-bit llama-family fixture loaded under each CPU weight policy: the native op's and the fp32
    copies' layouts join q/k/v and gate/up; logits match MLX's own quantized kernels on the unjoined
    layers (`cpu_weights="mlx"`, the reference) within the native op's bound."""
    from helpers import TINY_LLAMA, save_model_dir

    import mlxmodels
    from mlxmodels.models import build_model

    config = dict(TINY_LLAMA, vocab_size=256)
    mx.random.seed(0)
    model = build_model(config)
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.05) for k, v in tree_flatten(model.parameters())]))
    nn.quantize(model, group_size=32, bits=4)
    config["quantization"] = {"group_size": 32, "bits": 4}
    save_model_dir(tmp_path, config, dict(tree_flatten(model.parameters())), overwrite=True)
    ids = mx.array([[1, 5, 9, 3, 7, 2, 8]])
    reference = mlxmodels.load_model(tmp_path, cpu_weights="mlx")
    assert "q_proj" in reference.model.layers[0].self_attn
    want = np.array(reference(ids))
    for policy in ("quantized", "fp32"):
        joined = mlxmodels.load_model(tmp_path, cpu_weights=policy)
        layer = joined.model.layers[0]
        assert "qkv_proj" in layer.self_attn and "q_proj" not in layer.self_attn
        assert "gate_up_proj" in layer.mlp and "gate_proj" not in layer.mlp
        got = np.array(joined(ids))
        assert np.max(np.abs(got - want)) < 1e-4 * max(1.0, float(np.max(np.abs(want)))), policy
        # Decoding token by token: the joined layers make their heads in one op (`rotated_heads`).
        reference_cache, cache = reference.make_cache(), joined.make_cache()
        reference(ids, reference_cache), joined(ids, cache)
        for token in (4, 11, 6):
            step = mx.array([[token]])
            want_step, got_step = np.array(reference(step, reference_cache)), np.array(joined(step, cache))
            assert np.max(np.abs(got_step - want_step)) < 1e-4 * max(1.0, float(np.max(np.abs(want_step)))), policy
