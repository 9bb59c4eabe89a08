"""Transcendental math and attention for MLX's CPU backend, built from multiply-adds.

MLX's CPU backend evaluates `exp`, `sigmoid`, `tanh` and `erf` one element at a time, while
multiplies and adds are vectorised. Measured on the 2-core development machine (MLX 0.32.4, one
511 x 1536 float32 array, 785K elements): `mx.exp` 8.2 ms, `mx.sigmoid` 11 ms, `mx.tanh` 11.8 ms,
a multiply 0.16 ms. That made the SwiGLU activation 45% of a SmolLM2 MLP's prefill time and the
softmax inside `mx.fast.scaled_dot_product_attention` (which the CPU backend runs as plain ops) ~80%
of attention's: a 511-token causal attention took 29 ms for 0.6 GFLOP.

Here `exp(x)` is `2**n * p(r)`: n = round(x / ln 2) goes into the float's exponent bits, r = x - n ln 2
(|r| <= 0.35, reduced with a two-part ln 2 so it stays exact), and p is the degree-7 Taylor
polynomial of e**r (truncation error < 1e-8): within a float32 ulp (measured: 1e-7 relative at
most, where `mx.exp` itself is 3.8e-6 off near e**-87). Elementwise chains are fused with
`mx.compile` (MLX JIT-compiles them into C++ loops on the CPU, or runs them op by op where no
compiler is available): `exp` took 1.6 ms, the whole SwiGLU 2 ms, for the array above as one loop
each. Compiled shapeless (one trace for every length, see `_shapeless`), each is two loops: the same
results bit for bit, measured 0-15% slower than one loop (largest on attention-sized arrays).

Only float32 arrays on the CPU backend take this path (the CPU computes in float32, see
`loading.compute_dtype_for`); Metal and CUDA keep MLX's own kernels. `ORCHARD_CPU_MATH=mlx` switches the
path off for A/B comparisons.
"""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx

from metal_kernels import backend_name
from metal_kernels.backend import environment

_LOG2E = 1.4426950408889634
# ln 2 split in two (Cody and Waite): n * _LN2_HI is exact in float32 for |n| <= 126, so the reduced
# argument x - n ln 2 keeps float32 accuracy (x * log2(e) alone would lose ~5e-6 relative at |x| ~ 87).
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
# e**r for |r| <= ln(2) / 2: Taylor coefficients 1 / k!, highest degree first (Horner's order).
_EXP_POLY = [1.0 / math.factorial(k) for k in range(7, -1, -1)]
_ROUNDER = 12582912.0  # 1.5 * 2**23
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


MODES = ("auto", "mlx")


def mode() -> str:
    """ORCHARD_CPU_MATH (read on every call, so tests and A/B runs can switch it): 'auto' (default)
    uses this module on the CPU backend, 'mlx' keeps MLX's own ops everywhere."""
    value = environment("ORCHARD_CPU_MATH", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"ORCHARD_CPU_MATH={value!r} is not one of {', '.join(MODES)}")
    return value


def enabled(x: mx.array | None = None) -> bool:
    """Whether the CPU fast path applies (to `x`, when given)."""
    if backend_name() != "cpu" or mode() == "mlx":
        return False
    return x is None or x.dtype == mx.float32


def _exp_parts(x: mx.array) -> tuple[mx.array, mx.array]:
    """e**x as (p, the float32 bits of 2**n as int32): e**x = p * 2**n."""
    # Clamped so 2**n stays a normal float: above e**87.3 it saturates at 2**126 (float32 overflows
    # at e**88.7 anyway); below e**-87.3 (a masked score's -inf included) the result is exactly 0.
    # Not the clamp's ~1e-38: multiplied by values below 1 in the attention's weights @ values,
    # those make denormal products, which x86 computes far slower (docs/performance.md, "Third pass").
    tiny = x < -87.33
    x = mx.clip(x, -87.33, 87.33)
    # n = x / ln 2 rounded to nearest by adding and taking away 1.5 * 2**23 (the float's spacing is
    # 1 there): plain adds, which the compiled loop vectorizes, where `floor` is a libm call per
    # element.
    n = (x * _LOG2E + _ROUNDER) - _ROUNDER
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = r * _EXP_POLY[0] + _EXP_POLY[1]
    for c in _EXP_POLY[2:]:
        p = p * r + c
    return mx.where(tiny, 0.0, p), (n.astype(mx.int32) + 127) << 23


# Compiled shapeless: one trace serves every input shape of a given rank, so a chat's new prefill
# length each turn, and attention's growing key count, reuse it. (Traced per shape, MLX keeps one
# trace per length and function for the life of the process.) MLX cannot trace `mx.view` shapeless,
# so each function is two fused kernels with the view (free: no copy) between them.
_shapeless = partial(mx.compile, shapeless=True)


def _with_exp(argument, finish):
    """The function `finish(*inputs, exp(argument(*inputs)))` of `inputs`, as two shapeless kernels."""
    parts = _shapeless(lambda *inputs: _exp_parts(argument(*inputs)))
    done = _shapeless(lambda *args: finish(*args[:-2], args[-2] * args[-1]))

    def run(*inputs: mx.array) -> mx.array:
        p, bits = parts(*inputs)
        return done(*inputs, p, mx.view(bits, mx.float32))

    return run


def _gelu_z(gate: mx.array) -> mx.array:
    return _SQRT_2_OVER_PI * (gate + 0.044715 * gate * gate * gate)


exp = _with_exp(lambda x: x, lambda x, e: e)
sigmoid = _with_exp(lambda x: -x, lambda x, e: 1.0 / (1.0 + e))
tanh = _with_exp(lambda x: -(2.0 * x), lambda x, e: 2.0 * (1.0 / (1.0 + e)) - 1.0)  # 2 sigmoid(2x) - 1
# silu(gate) * up: SwiGLU's activation, gate * sigmoid(gate) * up.
silu_mul = _with_exp(lambda gate, up: -gate, lambda gate, up, e: gate * (1.0 / (1.0 + e)) * up)
# gelu_tanh(gate) * up: GeGLU's activation; 0.5 (1 + tanh(z)) is sigmoid(2 z).
gelu_approx_mul = _with_exp(lambda gate, up: -(2.0 * _gelu_z(gate)), lambda gate, up, e: gate * (1.0 / (1.0 + e)) * up)


def causal_allowed(queries: int, keys: int) -> mx.array:
    """Bool [queries, keys]: the queries are the last `queries` of `keys` positions."""
    q_pos = mx.arange(keys - queries, keys)[:, None]
    return mx.arange(keys)[None, :] <= q_pos


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask=None,
              softcap: float | None = None, sinks: mx.array | None = None, softmax=None) -> mx.array:
    """softmax(q k^T * scale [+ mask]) v for q [B, H, L, D], k [B, H_kv, S, D] and v [B, H_kv, S, Dv].

    `mask` is None, "causal" or a bool (allowed) / additive float array broadcastable to [L, S].
    Grouped-query heads are stacked as rows of one matrix per KV head, so keys and values are read
    once per group, never repeated. `softcap` applies Gemma 2's tanh soft-capping to the scores.
    `sinks` [H] (gpt-oss): one more logit per head, with no value, that joins each row's softmax.
    `softmax(scores, key_offset)`: a fused row softmax that applies a causal mask itself (the native
    op, metal_kernels/cpu/fused.h), used where there are no sinks.
    """
    B, H, L, D = q.shape
    if L == 1 and softcap is None:
        return _decode_attention(q, k, v, scale, mask, sinks)
    kv_heads, S = k.shape[1], k.shape[2]
    groups = H // kv_heads
    scores = (q * scale).reshape(B, kv_heads, groups * L, D) @ k.swapaxes(-1, -2)
    if softcap is not None:
        scores = tanh(scores * (1.0 / softcap)) * softcap
    scores = scores.reshape(B, kv_heads, groups, L, S)
    if softmax is not None and sinks is None:
        if isinstance(mask, mx.array):
            mask = mask[:, :, None] if mask.ndim == 4 else mask
            scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
        weights = softmax(scores, S - L if isinstance(mask, str) else -1)
        return (weights.reshape(B, kv_heads, groups * L, S) @ v).reshape(B, H, L, v.shape[-1])
    if isinstance(mask, str):
        mask = causal_allowed(L, S) if L > 1 else None
    if mask is not None and mask.ndim == 4:  # per row [B, 1, L, S] (a batch): under the groups axis too
        mask = mask[:, :, None]
    if mask is not None:
        # Masked scores become -inf, whose exp below is exactly 0.
        scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
    # The broadcast subtraction is its own op: inside a compiled kernel a broadcast input makes MLX
    # fall back to its strided loop, 2.6x slower than exp over the contiguous result.
    top = scores.max(axis=-1, keepdims=True)
    if sinks is not None:  # the sink joins the row's maximum and its denominator, not the output
        sink = sinks.astype(scores.dtype).reshape(1, kv_heads, groups, 1, 1)
        top = mx.maximum(top, sink)
    weights = exp(scores - top)
    total = weights.sum(axis=-1, keepdims=True)
    if sinks is not None:
        total = total + exp(sink - top)
    # Normalise the [.., L, D] output rather than the [.., L, S] weights: fewer divisions.
    out = (weights.reshape(B, kv_heads, groups * L, S) @ v) / total.reshape(B, kv_heads, groups * L, 1)
    return out.reshape(B, H, L, v.shape[-1])  # values may be narrower than keys (MLA)


def _decode_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask, sinks) -> mx.array:
    """`attention` for one query per head (decoding), grouped as above, with MLX's softmax: one row of
    scores per head is too few for the fused exp's two kernels to pay off. MLX's own
    scaled_dot_product_attention, which the CPU runs as plain ops, was measured 3-10x slower for this
    (SmolLM2's shapes, 2-core machine: 0.81 vs 0.06 ms at 200 keys, 7.0 vs 0.85 ms for 8 sequences
    decoding together): a large part of a batched decode step."""
    B, H, _, D = q.shape
    kv_heads = k.shape[1]
    groups = H // kv_heads
    scores = (q * scale).reshape(B, kv_heads, groups, D) @ k.swapaxes(-1, -2)  # [B, H_kv, groups, S]
    if isinstance(mask, mx.array):  # [S], [1, S] or a batch's [B, 1, 1, S]: all broadcast
        scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
    if sinks is not None:  # one more column per row for the sink, dropped after the softmax
        sink = mx.broadcast_to(sinks.astype(scores.dtype).reshape(1, kv_heads, groups, 1), (*scores.shape[:-1], 1))
        weights = mx.softmax(mx.concatenate([scores, sink], axis=-1), axis=-1)[..., :-1]
    else:
        weights = mx.softmax(scores, axis=-1)
    return (weights @ v).reshape(B, H, 1, v.shape[-1])
