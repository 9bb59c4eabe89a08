"""The public kernel functions: each runs a custom kernel or MLX's built-in ops, by `kernel_mode()`.

Every function has a built-in path written with MLX ops only; it is what the CPU backend runs, what
`ORCHARD_KERNELS=builtin` forces, and what any shape the custom kernel does not cover falls back
to (a batch of more than 8 rows for the matvec kernels, head dims above 128 or more than 16 query
rows per KV head for attention).
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from metal_kernels import kernels
from metal_kernels.backend import backend_name, kernel_mode

MAX_M = 8  # batch rows the matvec kernels accumulate in registers
ROWS_PER_GROUP = 2  # output rows (simdgroups) per matvec threadgroup
NSG = 4  # simdgroups per attention threadgroup
MAX_ROWS = 16  # query rows (GQA group x new tokens) one attention threadgroup serves
DPL = 4  # head-dim elements per lane: head dims up to 128
DEFAULT_CHUNK = 512  # keys per flash-decoding split


def _target(auto_custom_on: tuple[str, ...] = ()) -> str | None:
    """'metal', 'cuda' or 'emulate' when the custom kernel should run, None for the built-in path.
    `auto_custom_on`: the GPU backends where ORCHARD_KERNELS=auto picks the custom kernel (where
    timings show it winning, or none exist yet against a built-in path that does more work)."""
    mode = kernel_mode()
    if mode == "emulate":
        return "emulate"
    backend = backend_name()
    if mode == "builtin" or backend == "cpu":
        return None
    if mode == "custom" or backend in auto_custom_on:
        return backend
    return None


def _check_quantized(name: str, K: int, w: mx.array, scales: mx.array, group_size: int, bits: int) -> None:
    if bits not in (4, 8):
        raise ValueError(f"{name}: bits must be 4 or 8, got {bits}")
    if group_size not in (32, 64, 128):
        raise ValueError(f"{name}: group_size must be 32, 64 or 128, got {group_size}")
    if K % group_size or w.shape[-1] * 32 // bits != K or scales.shape[-1] * group_size != K:
        raise ValueError(f"{name}: x has {K} features but w {tuple(w.shape)} / scales {tuple(scales.shape)} "
                         f"do not match {bits}-bit groups of {group_size}")


def _matvec_launch(kernel, x2, weights, bits, group_size, N, template_extra, target):
    M, K = x2.shape
    dims = mx.array([M, N, K], dtype=mx.int32)
    groups = (N + ROWS_PER_GROUP - 1) // ROWS_PER_GROUP
    template = [("T", x2.dtype), ("BITS", bits), ("GROUP_SIZE", group_size), ("MAX_M", MAX_M),
                ("ROWS_PER_GROUP", ROWS_PER_GROUP), *template_extra]
    return kernels.launch(kernel, [x2, *weights, dims], template=template, grid=(32 * ROWS_PER_GROUP * groups, 1, 1),
                          threadgroup=(32 * ROWS_PER_GROUP, 1, 1), output_shapes=[(M, N)],
                          output_dtypes=[x2.dtype], target=target)[0]


def quantized_matmul(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, group_size: int = 64,
                     bits: int = 4) -> mx.array:
    """x @ dequantize(w).T for MLX-quantized `w` [N, K*bits/32]: the decode-time matvec."""
    K, N = x.shape[-1], w.shape[0]
    _check_quantized("quantized_matmul", K, w, scales, group_size, bits)
    M = math.prod(x.shape[:-1])
    target = _target()  # MLX's qmv is faster on CUDA (docs/gpu.md); Metal not timed yet
    if target is None or M > MAX_M or M == 0:
        return mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size=group_size, bits=bits)
    x2 = x.reshape(M, K)
    y = _matvec_launch(kernels.QMV, x2, [w, scales.astype(x.dtype), biases.astype(x.dtype)], bits, group_size, N,
                       [], target)
    return y.reshape(*x.shape[:-1], N)


ACTIVATIONS = {"silu": 0, "gelu_approx": 1}


def quantized_swiglu(x: mx.array, wg: mx.array, sg: mx.array, bg: mx.array, wu: mx.array, su: mx.array,
                     bu: mx.array, group_size: int = 64, bits: int = 4, activation: str = "silu") -> mx.array:
    """act(x @ dequantize(wg).T) * (x @ dequantize(wu).T) in one pass over x: the gated MLP input
    (SwiGLU with activation='silu', GeGLU with 'gelu_approx', GELU's tanh approximation)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"quantized_swiglu: activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    K, N = x.shape[-1], wg.shape[0]
    _check_quantized("quantized_swiglu", K, wg, sg, group_size, bits)
    _check_quantized("quantized_swiglu", K, wu, su, group_size, bits)
    M = math.prod(x.shape[:-1])
    target = _target()  # MLX's path wins on CUDA but for one row (docs/gpu.md); Metal not timed yet
    if target is None or M > MAX_M or M == 0:
        gate = mx.quantized_matmul(x, wg, sg, bg, transpose=True, group_size=group_size, bits=bits)
        up = mx.quantized_matmul(x, wu, su, bu, transpose=True, group_size=group_size, bits=bits)
        act = nn.silu if activation == "silu" else nn.gelu_approx
        return act(gate) * up
    x2 = x.reshape(M, K)
    dt = x.dtype
    weights = [wg, sg.astype(dt), bg.astype(dt), wu, su.astype(dt), bu.astype(dt)]
    y = _matvec_launch(kernels.QSWIGLU, x2, weights, bits, group_size, N, [("ACT", ACTIVATIONS[activation])], target)
    return y.reshape(*x.shape[:-1], N)


def attention_mask(queries: int, keys: int, window: int | None) -> mx.array | str | None:
    """The mask for `queries` new tokens that are the last of `keys` positions (causal, windowed)."""
    if queries == 1 and (window is None or window >= keys):
        return None
    q_pos = mx.arange(keys - queries, keys)[:, None]
    k_pos = mx.arange(keys)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (q_pos - k_pos < window)
    return allowed


def _attention_supported(q: mx.array, Hkv: int, D: int) -> bool:
    B, Hq, Lq, _ = q.shape
    return D <= DPL * 32 and Hq % Hkv == 0 and (Hq // Hkv) * Lq <= MAX_ROWS


def _run_attention(kernel, q, kv_inputs, S, Hkv, scale, window, chunk, template_extra, target):
    B, Hq, Lq, D = q.shape
    chunk = chunk or DEFAULT_CHUNK
    chunks = (S + chunk - 1) // chunk
    params = mx.array([B, Hq, Hkv, Lq, S, D, window or 0, chunk, chunks], dtype=mx.int32)
    template = [("T", q.dtype), ("NSG", NSG), ("MAX_ROWS", MAX_ROWS), ("DPL", DPL), *template_extra]
    rows = B * Hq * Lq
    o_part, m_part, l_part = kernels.launch(
        kernel, [q, *kv_inputs, params, mx.array([scale], dtype=mx.float32)], template=template,
        grid=(32 * NSG * chunks, Hkv, B), threadgroup=(32 * NSG, 1, 1),
        output_shapes=[(rows * chunks, D), (rows * chunks,), (rows * chunks,)],
        output_dtypes=[mx.float32] * 3, target=target)
    reduce_params = mx.array([rows, D, chunks], dtype=mx.int32)
    out = kernels.launch(kernels.REDUCE, [o_part, m_part, l_part, reduce_params], template=[("T", q.dtype)],
                         grid=(32 * ((D + 31) // 32), rows, 1), threadgroup=(32, 1, 1),
                         output_shapes=[(rows, D)], output_dtypes=[q.dtype], target=target)[0]
    return out.reshape(B, Hq, Lq, D)


def _check_window(window):
    if window is not None and window < 1:
        raise ValueError(f"decode_attention: window must be at least 1, got {window}")


def decode_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, window: int | None = None,
                     chunk: int | None = None) -> mx.array:
    """softmax(q k^T * scale) v for the last Lq positions of a [B, Hkv, S, D] cache, q [B, Hq, Lq, D]:
    causal, GQA/MQA by Hq / Hkv, keys older than `window` positions masked. `chunk` is the number
    of keys per flash-decoding split (default 512)."""
    _check_window(window)
    B, Hq, Lq, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    target = _target()  # float caches: MLX's fused SDPA is faster on CUDA (docs/gpu.md)
    if target is None or not _attention_supported(q, Hkv, D):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=attention_mask(Lq, S, window))
    return _run_attention(kernels.ATTENTION, q, [k.astype(q.dtype), v.astype(q.dtype)], S, Hkv, scale, window,
                          chunk, [], target)


def quantized_decode_attention(q: mx.array, k: tuple, v: tuple, scale: float, group_size: int = 64, bits: int = 8,
                               window: int | None = None, chunk: int | None = None) -> mx.array:
    """decode_attention over a quantized cache: `k` and `v` are (packed, scales, biases) as
    mx.quantize gives for [B, Hkv, S, D] along D. The kernel reads the packed cache directly; the
    built-in path dequantizes it first, which is what it must avoid on a GPU."""
    _check_window(window)
    B, Hq, Lq, D = q.shape
    kq, ks, kb = k
    vq, vs, vb = v
    Hkv, S = kq.shape[1], kq.shape[2]
    if bits not in (4, 8) or group_size not in (32, 64, 128) or D % group_size:
        raise ValueError(f"quantized_decode_attention: head dim {D} with {bits}-bit groups of {group_size} is not supported")
    # Nothing built in reads a quantized cache directly, yet on CUDA dequantize + SDPA is as fast or
    # faster (docs/gpu.md); Metal, untimed, keeps the kernel that reads the packed cache.
    target = _target(auto_custom_on=("metal",))
    if target is None or not _attention_supported(q, Hkv, D):
        kf = mx.dequantize(kq, ks, kb, group_size=group_size, bits=bits).astype(q.dtype)
        vf = mx.dequantize(vq, vs, vb, group_size=group_size, bits=bits).astype(q.dtype)
        return mx.fast.scaled_dot_product_attention(q, kf, vf, scale=scale, mask=attention_mask(Lq, S, window))
    dt = q.dtype
    inputs = [kq, ks.astype(dt), kb.astype(dt), vq, vs.astype(dt), vb.astype(dt)]
    return _run_attention(kernels.QUANT_ATTENTION, q, inputs, S, Hkv, scale, window, chunk,
                          [("BITS", bits), ("GROUP_SIZE", group_size)], target)
