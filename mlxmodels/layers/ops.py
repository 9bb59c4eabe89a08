"""The op layer: the few operations whose fastest form depends on the backend.

Model layers (attention, MLA, RoPE, the MLPs) describe their math once and call these functions;
each picks the implementation for the array it is given:

- on the CPU backend with float32 arrays, Orchard's native fused operations where they are built
  (`metal_kernels.cpu`: RMS norm, table RoPE, one-query attention and argmax as one operation each, where
  MLX's CPU backend runs `mx.fast.*` as 10-30 plain operations whose per-operation cost dominates a
  decode step), else Orchard's multiply-add forms (`cpu_math`: MLX's CPU backend evaluates
  exp/sigmoid/tanh one element at a time);
- a quantized KV cache goes to the custom decode-attention kernel (`metal_kernels`), which reads
  the packed keys and values directly;
- everywhere else, MLX's fused ops (`mx.fast.*`).

A new backend path plugs in here, as one more branch of the op it speeds up; no layer changes.
`ORCHARD_CPU_MATH=mlx` and `ORCHARD_KERNELS=builtin` switch the custom paths off for A/B runs.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx

from metal_kernels import cpu as native
from metal_kernels import quantized_decode_attention
from metal_kernels.quantized import native_enabled
from mlxmodels.cache import window_mask
from mlxmodels.layers import cpu_math

# Activations whose gated product `act(gate) * up` has a fused CPU form in cpu_math.
_CPU_GATED = {"silu": "silu_mul", "swish": "silu_mul", "gelu_pytorch_tanh": "gelu_approx_mul",
              "gelu_tanh": "gelu_approx_mul"}
# The native operation's code for each fused form (metal_kernels/cpu/fused.h).
_NATIVE_GATED = {"silu_mul": 0, "gelu_approx_mul": 1}


def _fused(x: mx.array) -> bool:
    """Whether `x` takes the native fused CPU operations (ORCHARD_CPU_MATH=mlx or
    ORCHARD_KERNELS=builtin switch them off)."""
    return cpu_math.enabled(x) and native_enabled()


def rms_norm(x: mx.array, weight: mx.array | None, eps: float) -> mx.array:
    """x * rsqrt(mean(x^2, -1) + eps) * weight (no weight: unscaled)."""
    if _fused(x) and (weight is None or weight.dtype == mx.float32):
        return native.module().rms_norm(x, weight, eps)
    return mx.fast.rms_norm(x, weight, eps)


def add_rms_norm(x: mx.array, delta: mx.array, weight: mx.array | None, eps: float) -> tuple[mx.array, mx.array]:
    """(h, rms_norm(h)) for h = x + delta: a residual add and the norm after it, as one native operation
    on the CPU (each result what the two operations give, to the bit), else the two."""
    if (_fused(x) and delta.dtype == mx.float32 and delta.shape == x.shape
            and (weight is None or weight.dtype == mx.float32)):
        return tuple(native.module().add_rms_norm(x, delta, weight, eps))
    h = x + delta
    return h, rms_norm(h, weight, eps)


def argmax(x: mx.array) -> mx.array:
    """The index of each row's largest value over the last axis, as mx.argmax(x, axis=-1) (uint32, the
    first of equal values, a NaN above every number): one native operation on the CPU, where MLX's
    reduction walks the vocabulary one value at a time (a greedy batch's pick ~5x faster)."""
    if _fused(x):
        return native.module().argmax(x)
    return mx.argmax(x, axis=-1)


# Key and value dtypes the native one-query attention reads (float16: widened as it reads them).
_NATIVE_KV = (mx.float32, mx.float16)


def _decode_mask_fits(mask, batch: int, keys: int) -> bool:
    """Whether the native one-query attention takes `mask`: none, or bool/float32 broadcasting to
    [B, 1, 1, S] (a single sequence's or a batch's per-row mask)."""
    if mask is None or isinstance(mask, str):
        return True
    shape = (1,) * (4 - mask.ndim) + tuple(mask.shape)
    return (mask.ndim <= 4 and mask.dtype in (mx.bool_, mx.float32) and shape[1] == shape[2] == 1
            and shape[0] in (1, batch) and shape[3] in (1, keys))


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask=None, softcap: float | None = None,
              sinks: mx.array | None = None, flat: bool = False) -> mx.array:
    """Scaled dot-product attention, queries [B, H, L, D] over keys and values [B, H_kv, S, D]
    (grouped-query when H_kv < H). `mask`: None, "causal", or a boolean/additive array that
    broadcasts to the scores (a batch's per-row [B, 1, L, S] included); `softcap`: Gemma 2's tanh
    cap on the scores; `sinks`: gpt-oss's per-head sink logits. The result is [B, H, L, Dv], or with
    `flat` [B, L, H * Dv], what an output projection reads (the native decode gives that shape
    directly: one operation fewer per layer and token)."""
    if (q.shape[2] == 1 and softcap is None and _fused(q) and k.dtype == v.dtype and k.dtype in _NATIVE_KV
            and _decode_mask_fits(mask, q.shape[0], k.shape[2])
            and (sinks is None or sinks.dtype == mx.float32)):
        return native.module().decode_attention(q, k, v, scale, None if isinstance(mask, str) else mask, sinks,
                                                flat=flat)
    out = _attention(q, k, v, scale, mask, softcap, sinks)
    return flatten_heads(out, q.shape[0], q.shape[2]) if flat else out


def flatten_heads(out: mx.array, B: int, L: int) -> mx.array:
    """Attention's [B, H, L, Dv] as [B, L, H * Dv] (for one token a reshape of the same memory, whatever
    the heads' layout: a kernel may hand back [B, H, Dv])."""
    return out.reshape(B, L, -1) if L == 1 else out.transpose(0, 2, 1, 3).reshape(B, L, -1)


def _attention(q, k, v, scale, mask, softcap, sinks):
    """`attention` off the native one-query path."""
    if k.dtype != q.dtype:  # a float16 cache (kv_bits 16) under float32 queries, off the native path
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    if cpu_math.enabled(q):
        softmax = native.module().softmax if native_enabled() else None
        return cpu_math.attention(q, k, v, scale, mask, softcap, sinks, softmax)
    if softcap is None:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask, sinks=sinks)
    return _softcapped_attention(q, k, v, scale, mask, softcap, sinks)


def _softcapped_attention(q, k, v, scale, mask, softcap, sinks):
    """The fused kernel cannot soft-cap scores: by hand, grouping query heads per KV head."""
    B, H, L, D = q.shape
    groups = H // k.shape[1]
    q = q.reshape(B, k.shape[1], groups, L, D)
    scores = (q * scale) @ mx.expand_dims(k, 2).swapaxes(-1, -2)
    scores = mx.tanh(scores / softcap) * softcap
    if isinstance(mask, str):
        mask = window_mask(k.shape[2], L, k.shape[2], None)
    if mask is not None:
        if mask.ndim == 4:  # per row [B, 1, L, S] (a batch): under the groups axis too
            mask = mask[:, :, None]
        scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
    if sinks is not None:  # one more column per row for the sink, dropped after the softmax
        sink = mx.broadcast_to(sinks.astype(scores.dtype).reshape(1, k.shape[1], groups, 1, 1),
                               (*scores.shape[:-1], 1))
        scores = mx.concatenate([scores, sink], axis=-1)
    weights = mx.softmax(scores.astype(mx.float32), axis=-1).astype(q.dtype)
    if sinks is not None:
        weights = weights[..., :-1]
    return (weights @ mx.expand_dims(v, 2)).reshape(B, H, L, D)


def quantized_attention(q: mx.array, k: tuple, v: tuple, scale: float, bits: int, group_size: int, mask=None,
                        softcap: float | None = None, sinks: mx.array | None = None) -> mx.array:
    """`attention` over a quantized KV cache ((packed, scales, biases) keys and values). The kernel
    applies a plain causal mask and neither soft-capping nor sinks; other cases (a batch's padding
    mask among them) dequantize first."""
    if softcap is not None or sinks is not None or isinstance(mask, mx.array):
        k, v = (mx.dequantize(*t, group_size=group_size, bits=bits).astype(q.dtype) for t in (k, v))
        return attention(q, k, v, scale, mask, softcap, sinks)
    return quantized_decode_attention(q, k, v, scale, group_size=group_size, bits=bits)


def gated(act: Callable, name: str) -> Callable:
    """(gate, up) -> act(gate) * up, fused into one loop on the CPU where `name` has a fused form.
    With `up` None, `gate` is a joined projection's [gate | up] (last axis), read by the native loop
    without a split (one operation fewer per layer and token)."""
    fused = _CPU_GATED.get(name)
    native_kind = _NATIVE_GATED.get(fused)

    def product(gate: mx.array, up: mx.array | None = None) -> mx.array:
        if up is None:
            if fused is not None and cpu_math.enabled(gate) and native_enabled():
                return native.module().gated_activation(gate, None, native_kind)
            gate, up = mx.split(gate, 2, axis=-1)
        if fused is not None and cpu_math.enabled(gate):
            if native_enabled() and up.dtype == mx.float32 and gate.shape == up.shape:
                return native.module().gated_activation(gate, up, native_kind)
            return getattr(cpu_math, fused)(gate, up)
        return act(gate) * up

    return product


def sigmoid(x: mx.array) -> mx.array:
    return cpu_math.sigmoid(x) if cpu_math.enabled(x) else mx.sigmoid(x)


def rotate(x: mx.array, offset, fused: Callable, tables: Callable | None) -> mx.array:
    """A rotary embedding: `tables(x, offset)` (cos/sin tables and multiply-adds) on the CPU, where
    `mx.fast.rope` runs as plain ops with per-element cos and sin; else `fused(x, offset)`. `tables`
    is None where a variant has no table form (dynamic NTK: its base changes with the length)."""
    if tables is not None and cpu_math.enabled(x):
        return tables(x, offset)
    return fused(x, offset)


def rotated_heads(qkv: mx.array, heads: int, kv_heads: int, rope, offset) -> tuple | None:
    """q [B, heads, L, D] and k, v [B, kv_heads, L, D] from a joined projection qkv [B, L, (heads +
    2 kv_heads) D], q and k rotated by `rope` from `offset`: one native operation where the layer
    would run a split, three reshapes and two rotations. None where it does not apply (off the CPU
    fast path, or a rotation with no table form): the caller takes the general path."""
    if not _fused(qkv):
        return None
    args = rope.table_args(qkv.shape[1], offset)
    if args is None:
        return None
    return tuple(native.module().rotated_heads(qkv, *args, heads, kv_heads, rope.dims, rope.traditional))


def rotate_by_tables(x: mx.array, cos: mx.array, sin: mx.array, offsets: mx.array, dims: int, traditional: bool,
                     composed: Callable) -> mx.array:
    """The tables path of `rotate`: x [..., L, D] with token l of row b at position offsets[b] + l
    (int32 [1] or [B]) and whole [P, dims] tables, as one native operation where it is built, else
    `composed()` (slices of the tables and multiply-adds)."""
    if _fused(x):
        return native.module().rope(x, cos, sin, offsets, dims, traditional)
    return composed()
