"""Caches against plain attention over the full sequence (MLX's own sdpa is the reference)."""

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels.cache import KVCache, RotatingKVCache, copy_cache, trim_cache, window_mask


def reference_attention(q, k, v, window=None):
    """Full-sequence attention with an explicit mask: the ground truth for cached attention."""
    L = q.shape[2]
    mask = window_mask(L, L, L, window)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)


def run_cached(cache, q, k, v, chunks, start=0):
    """Feed positions start.. in `chunks`, attending through the cache; the outputs concatenated."""
    outs = []
    for size in chunks:
        sl = slice(start, start + size)
        keys, values = cache.update_and_fetch(k[:, :, sl], v[:, :, sl])
        outs.append(
            mx.fast.scaled_dot_product_attention(q[:, :, sl], keys, values, scale=0.25, mask=cache.mask(size))
        )
        start += size
    return mx.concatenate(outs, axis=2)


@pytest.mark.parametrize("cache_kind", ["kv", "rotating"])
@pytest.mark.parametrize("chunks", [[1] * 40, [7, 1, 1, 13, 1, 17], [40], [3, 30, 1, 1, 1, 4]])
def test_cached_attention_matches_full(cache_kind, chunks):
    mx.random.seed(0)
    L, window = sum(chunks), 6
    q, k, v = (mx.random.normal((1, 2, L, 16)) for _ in range(3))
    if cache_kind == "kv":
        cache, expected = KVCache(), reference_attention(q, k, v)
    else:
        cache, expected = RotatingKVCache(window), reference_attention(q, k, v, window)
    cache.step = 8  # force several growth/compaction cycles
    got = run_cached(cache, q, k, v, chunks)
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-5, atol=1e-5)
    assert cache.offset == L


def test_kv_cache_grows_in_steps_not_per_token():
    cache = KVCache()
    k = mx.zeros((1, 1, 1, 4))
    cache.update_and_fetch(k, k)
    buffer = cache.keys.shape[2]
    assert buffer == KVCache.step
    for _ in range(KVCache.step - 1):
        cache.update_and_fetch(k, k)
    assert cache.keys.shape[2] == buffer  # no reallocation within a step
    cache.update_and_fetch(k, k)
    assert cache.keys.shape[2] == 2 * KVCache.step


def test_trim_then_continue_equals_fresh_run():
    """Rewinding and re-feeding different tokens gives what a fresh cache would (prefix reuse)."""
    mx.random.seed(1)
    q, k, v = (mx.random.normal((1, 2, 30, 16)) for _ in range(3))
    for cache in (KVCache(), RotatingKVCache(8)):
        cache.step = 8
        run_cached(cache, q, k, v, [20])
        assert trim_cache([cache], 5)
        assert cache.offset == 15
        tail = run_cached(cache, q, k, v, [4, 1, 1], start=15)
        window = getattr(cache, "window", None)
        expected = reference_attention(q[:, :, :21], k[:, :, :21], v[:, :, :21], window)[:, :, 15:]
        np.testing.assert_allclose(np.array(tail), np.array(expected), rtol=1e-5, atol=1e-5)


def test_rotating_cache_refuses_to_rewind_past_its_history():
    cache = RotatingKVCache(4)
    cache.step = 2
    k = mx.zeros((1, 1, 1, 4))
    for _ in range(40):
        cache.update_and_fetch(k, k)
    assert cache.can_trim(2)
    assert not cache.can_trim(30)
    assert not trim_cache([KVCache(), cache], 30)  # all layers or none


def test_copy_is_independent_snapshot():
    mx.random.seed(2)
    q, k, v = (mx.random.normal((1, 2, 12, 16)) for _ in range(3))
    cache = RotatingKVCache(4)
    run_cached(cache, q, k, v, [6])
    (snapshot,) = copy_cache([cache])
    run_cached(cache, q, k, v, [6], start=6)
    assert snapshot.offset == 6
    out = run_cached(snapshot, q, k, v, [6], start=6)
    expected = reference_attention(q, k, v, 4)[:, :, 6:]
    np.testing.assert_allclose(np.array(out), np.array(expected), rtol=1e-5, atol=1e-5)


def test_cache_footprint_counts_held_positions_and_fixed_state():
    """Attention caches count the positions they hold (not the room allocated ahead), recurrent
    states their whole size, composite layers both parts; bench and docs report these numbers."""
    from mlxmodels.cache import AttentionSSMCache, LatentKVCache, SSMCache, StatelessCache, cache_footprint

    kv, latent, ssm, both = KVCache(), LatentKVCache(), SSMCache(), AttentionSSMCache()
    kv.update_and_fetch(mx.zeros((1, 2, 300, 8)), mx.zeros((1, 2, 300, 8)))  # 512 positions allocated
    latent.update_and_fetch(mx.zeros((1, 1, 300, 16)), mx.zeros((1, 1, 300, 4)))
    ssm.update(mx.zeros((1, 3, 10)), mx.zeros((1, 4, 5, 6)), 300)
    both.attention.update_and_fetch(mx.zeros((1, 1, 7, 8)), mx.zeros((1, 1, 7, 8)))
    both.ssm.update(mx.zeros((1, 3, 2)), mx.zeros((1, 2, 2, 2)), 7)
    footprint = cache_footprint([kv, latent, ssm, both, StatelessCache()])
    assert footprint["attention"] == 4 * (2 * 300 * 2 * 8 + 300 * (16 + 4) + 2 * 7 * 8)
    assert footprint["state"] == 4 * (3 * 10 + 4 * 5 * 6 + 3 * 2 + 8)
