"""The gated delta rule (layers/delta_rule.py): chunked prefill and one-token steps against the
recurrence itself, written out token by token in float64 NumPy.

The families that use it (Gated DeltaNet, Kimi Delta Attention) are compared with transformers'
logits in tests/test_parity.py; this file pins the core on shapes and decays the fixtures do not reach:
lengths that do and do not divide the chunk, an incoming state, decay per head and per key channel,
and decays strong enough that a naive exp(-G) factorisation would overflow.

Tolerance: 1e-5 of the output scale. Both sides compute the same sums in a different order (float32
matrix products vs float64 loops); the error seen is ~3e-7, while a wrong mask, decay or sign changes
the output by O(1).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxmodels.layers.delta_rule import gated_delta_rule

TOLERANCE = 1e-5


def recurrence(q, k, v, g, beta, state):
    """S = exp(g) S; S += k (beta (v - S^T k))^T; o = S^T q, one token at a time."""
    q, k, v, g, beta = (np.asarray(t, dtype=np.float64) for t in (q, k, v, g, beta))
    B, L, H, Dk = k.shape
    S = np.zeros((B, H, Dk, v.shape[-1])) if state is None else np.asarray(state, dtype=np.float64)
    outputs = []
    for t in range(L):
        decay = np.exp(g[:, t])
        S = S * (decay[..., None, None] if decay.ndim == 2 else decay[..., None])
        predicted = np.einsum("bhk,bhkv->bhv", k[:, t], S)
        S = S + np.einsum("bhk,bhv->bhkv", k[:, t], (v[:, t] - predicted) * beta[:, t][..., None])
        outputs.append(np.einsum("bhk,bhkv->bhv", q[:, t], S))
    return np.stack(outputs, axis=1), S


def inputs(L: int, per_channel: bool, with_state: bool, decay_scale: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    B, H, Dk, Dv = 2, 3, 16, 8
    q = rng.normal(size=(B, L, H, Dk))
    k = rng.normal(size=(B, L, H, Dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)  # as the families feed it: L2-normalised keys
    q /= np.linalg.norm(q, axis=-1, keepdims=True) * np.sqrt(Dk)
    v = rng.normal(size=(B, L, H, Dv))
    g = -np.abs(rng.normal(size=(B, L, H, Dk) if per_channel else (B, L, H))) * decay_scale
    beta = 1 / (1 + np.exp(-rng.normal(size=(B, L, H))))
    state = rng.normal(size=(B, H, Dk, Dv)) if with_state else None
    return q, k, v, g, beta, state


def assert_close(ours, theirs, what):
    ours, theirs = np.array(ours), np.asarray(theirs)
    scale = np.abs(theirs).max()
    error = np.abs(ours - theirs).max()
    assert error <= TOLERANCE * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def run(q, k, v, g, beta, state, chunk_size):
    as_mx = lambda t: None if t is None else mx.array(t.astype(np.float32))  # noqa: E731
    return gated_delta_rule(*(as_mx(t) for t in (q, k, v, g, beta)), as_mx(state), chunk_size=chunk_size)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-head", "per-channel"])
@pytest.mark.parametrize("with_state", [False, True], ids=["fresh", "carried-state"])
@pytest.mark.parametrize("L", [1, 5, 32, 45, 100])
def test_matches_the_recurrence(L, with_state, per_channel):
    data = inputs(L, per_channel, with_state)
    o, S = run(*data, chunk_size=16)  # 45 and 100 tokens end in a partial chunk
    expected_o, expected_S = recurrence(*data)
    assert o.shape == expected_o.shape and S.dtype == mx.float32
    assert_close(o, expected_o, f"output, L={L}")
    assert_close(S, expected_S, f"final state, L={L}")


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-head", "per-channel"])
def test_strong_decay_stays_finite(per_channel):
    """Within a 64-token chunk the cumulative log decay reaches ~-1300 here: exp(-G) would overflow."""
    data = inputs(150, per_channel, True, decay_scale=25.0, seed=3)
    o, S = run(*data, chunk_size=64)
    assert np.isfinite(np.array(o)).all() and np.isfinite(np.array(S)).all()
    expected_o, expected_S = recurrence(*data)
    assert_close(o, expected_o, "output")
    assert_close(S, expected_S, "final state")


def test_prefill_then_steps_equals_one_pass():
    """A chunked prefill's state, continued one token at a time, gives the single pass's outputs."""
    q, k, v, g, beta, _ = inputs(70, False, False)
    whole, _ = run(q, k, v, g, beta, None, chunk_size=64)
    first, state = run(q[:, :67], k[:, :67], v[:, :67], g[:, :67], beta[:, :67], None, chunk_size=64)
    steps = [first]
    for t in range(67, 70):
        o, state = gated_delta_rule(*(mx.array(x[:, t : t + 1].astype(np.float32)) for x in (q, k, v, g, beta)), state)
        steps.append(o)
    assert_close(mx.concatenate(steps, axis=1), np.array(whole), "prefill + steps")
