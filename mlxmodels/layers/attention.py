"""Multi-head attention with grouped KV heads (MHA, GQA and MQA alike), RoPE and a per-layer cache.

Switches cover the dense families: projection biases (Qwen2), per-head q/k RMSNorm (Qwen3, Gemma 3),
a sliding window (Mistral, Gemma 3's local layers) and attention-logit soft-capping (Gemma 2 style).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from metal_kernels import quantized_decode_attention
from mlxmodels.cache import window_mask
from mlxmodels.layers import cpu_math
from mlxmodels.layers.norms import OffsetRMSNorm, RMSNorm
from mlxmodels.layers.rope import RoPE


@dataclass
class AttentionSpec:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: RoPE
    scale: float
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm: str | None = None  # None, "rms" or "offset_rms" (Gemma's 1 + w)
    norm_eps: float = 1e-6
    sliding_window: int | None = None
    logit_softcap: float | None = None


class Attention(nn.Module):
    def __init__(self, spec: AttentionSpec):
        super().__init__()
        s = spec
        self.num_heads, self.num_kv_heads, self.head_dim = s.num_heads, s.num_kv_heads, s.head_dim
        self.scale = s.scale
        self.sliding_window = s.sliding_window
        self.logit_softcap = s.logit_softcap
        self.q_proj = nn.Linear(s.hidden_size, s.num_heads * s.head_dim, bias=s.qkv_bias)
        self.k_proj = nn.Linear(s.hidden_size, s.num_kv_heads * s.head_dim, bias=s.qkv_bias)
        self.v_proj = nn.Linear(s.hidden_size, s.num_kv_heads * s.head_dim, bias=s.qkv_bias)
        self.o_proj = nn.Linear(s.num_heads * s.head_dim, s.hidden_size, bias=s.out_bias)
        if s.qk_norm:
            norm = OffsetRMSNorm if s.qk_norm == "offset_rms" else RMSNorm
            self.q_norm = norm(s.head_dim, s.norm_eps)
            self.k_norm = norm(s.head_dim, s.norm_eps)
        self.rope = s.rope

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(B, L, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(B, L, self.num_kv_heads, self.head_dim)
        if "q_norm" in self:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))

        offset = cache.offset if cache is not None else 0
        q = self.rope(q, offset=offset)
        k = self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
            mask = cache.mask(L)
        elif self.sliding_window is not None and L > self.sliding_window:
            mask = window_mask(L, L, L, self.sliding_window)
        else:
            mask = "causal" if L > 1 else None

        if isinstance(k, tuple):  # a QuantizedKVCache hands back (packed, scales, biases)
            out = self._attend_quantized(q, k, v, mask, cache)
        else:
            out = self._attend(q, k, v, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def _attend_quantized(self, q, k, v, mask, cache):
        """Attention over a quantized KV cache: the kernel reads the packed keys and values directly.
        Full-attention layers only (make_cache keeps sliding-window layers in float), so the mask is
        plain causal, which is what the kernel applies."""
        if self.logit_softcap is not None:  # no soft-capping in the kernel: dequantize for _attend
            k, v = (mx.dequantize(*t, group_size=cache.group_size, bits=cache.bits).astype(q.dtype) for t in (k, v))
            return self._attend(q, k, v, mask)
        return quantized_decode_attention(q, k, v, self.scale, group_size=cache.group_size, bits=cache.bits)

    def _attend(self, q, k, v, mask):
        if cpu_math.enabled(q):
            return cpu_math.attention(q, k, v, self.scale, mask, self.logit_softcap)
        if self.logit_softcap is None:
            return mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        # The fused kernel cannot soft-cap scores: do it by hand, grouping query heads per KV head.
        B, H, L, D = q.shape
        groups = H // k.shape[1]
        q = q.reshape(B, k.shape[1], groups, L, D)
        scores = (q * self.scale) @ mx.expand_dims(k, 2).swapaxes(-1, -2)
        scores = mx.tanh(scores / self.logit_softcap) * self.logit_softcap
        if isinstance(mask, str):
            mask = window_mask(k.shape[2], L, k.shape[2], None)
        if mask is not None:
            scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
        weights = mx.softmax(scores.astype(mx.float32), axis=-1).astype(q.dtype)
        return (weights @ mx.expand_dims(v, 2)).reshape(B, H, L, D)
