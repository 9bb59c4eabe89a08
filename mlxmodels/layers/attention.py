"""Multi-head attention with grouped KV heads (MHA, GQA and MQA alike), RoPE and a per-layer cache.

Switches cover the dense families: projection biases (Qwen2), per-head q/k RMSNorm (Qwen3, Gemma 3)
or one q/k RMSNorm across all heads with optional q/k/v clipping (OLMoE, OLMo 2/3),
a sliding window (Mistral, Gemma 3's local layers), attention-logit soft-capping (Gemma 2 style),
a sigmoid output gate per head (Qwen3-Next, Qwen3.5), and Llama 4's chunked attention, weightless q/k
norms and position-dependent query temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import window_mask
from mlxmodels.layers import ops
from mlxmodels.layers.norms import OffsetRMSNorm, RMSNorm, UnitRMSNorm
from mlxmodels.layers.rope import RoPE


@dataclass
class AttentionSpec:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope: RoPE | None  # None: no positional encoding in attention (NoPE: Jamba, Granite 4.0-H)
    scale: float
    qkv_bias: bool = False
    out_bias: bool = False
    # None; per head: "rms", "offset_rms" (Gemma's 1 + w) or "unit_rms" (no weight: Llama 4);
    # "full_width": one RMSNorm over all heads' q (and one over all k) before the split into heads
    # (OLMoE, OLMo 2/3).
    qk_norm: str | None = None
    clip_qkv: float | None = None  # OLMoE: q, k, v clipped to ±clip_qkv (after the q/k norms)
    norm_eps: float = 1e-6
    sliding_window: int | None = None
    logit_softcap: float | None = None
    # Qwen3-Next / Qwen3.5: q_proj also emits a gate per head (each head's [query, gate] side by side)
    # and the attention output is multiplied by sigmoid(gate) before o_proj.
    output_gate: bool = False
    # gpt-oss: a learned logit per query head (`sinks`) joins each softmax's denominator with no value
    # attached, so a head can give most of its weight to nothing.
    sinks: bool = False
    # Phi-3: one `qkv_proj` whose output is [q | k | v] (one matmul instead of three).
    fused_qkv: bool = False
    # Llama 4: positions fall into chunks of this many tokens and a token attends only within its own
    # chunk (a window that restarts at each chunk boundary; cached by `ChunkedKVCache`).
    attention_chunk: int | None = None
    # Llama 4's NoPE layers: (floor_scale, attn_scale). The query at position p is multiplied by
    # 1 + attn_scale * log(1 + floor((p + 1) / floor_scale)): sharper attention far into long contexts.
    query_temperature: tuple[float, float] | None = None


class Attention(nn.Module):
    def __init__(self, spec: AttentionSpec):
        super().__init__()
        s = spec
        self.num_heads, self.num_kv_heads, self.head_dim = s.num_heads, s.num_kv_heads, s.head_dim
        self.scale = s.scale
        self.sliding_window = s.sliding_window
        self.attention_chunk = s.attention_chunk
        self.query_temperature = s.query_temperature
        self.logit_softcap = s.logit_softcap
        self.output_gate = s.output_gate
        self.qk_norm = s.qk_norm
        self.clip_qkv = s.clip_qkv
        q_outputs = s.num_heads * s.head_dim * (2 if s.output_gate else 1)
        kv_outputs = s.num_kv_heads * s.head_dim
        if s.fused_qkv:
            self.qkv_proj = nn.Linear(s.hidden_size, q_outputs + 2 * kv_outputs, bias=s.qkv_bias)
        else:
            self.q_proj = nn.Linear(s.hidden_size, q_outputs, bias=s.qkv_bias)
            self.k_proj = nn.Linear(s.hidden_size, kv_outputs, bias=s.qkv_bias)
            self.v_proj = nn.Linear(s.hidden_size, kv_outputs, bias=s.qkv_bias)
        self.o_proj = nn.Linear(s.num_heads * s.head_dim, s.hidden_size, bias=s.out_bias)
        if s.qk_norm == "full_width":
            self.q_norm = RMSNorm(s.num_heads * s.head_dim, s.norm_eps)
            self.k_norm = RMSNorm(s.num_kv_heads * s.head_dim, s.norm_eps)
        elif s.qk_norm:
            norm = {"offset_rms": OffsetRMSNorm, "unit_rms": UnitRMSNorm}.get(s.qk_norm, RMSNorm)
            self.q_norm = norm(s.head_dim, s.norm_eps)
            self.k_norm = norm(s.head_dim, s.norm_eps)
        self.rope = s.rope
        if s.sinks:
            self.sinks = mx.zeros((s.num_heads,))

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        B, L, _ = x.shape
        offset = cache.offset if cache is not None else 0
        if "qkv_proj" in self:
            qkv = self.qkv_proj(x)
            if self._plain_rope() and (heads := ops.rotated_heads(
                    qkv, self.num_heads, self.num_kv_heads, self.rope, offset)) is not None:
                return self._attend_heads(*heads, cache, B, L)
            q_size = self.num_heads * self.head_dim * (2 if self.output_gate else 1)
            q, k, v = mx.split(qkv, [q_size, q_size + self.num_kv_heads * self.head_dim], axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.output_gate:
            q, gate = mx.split(q.reshape(B, L, self.num_heads, 2 * self.head_dim), 2, axis=-1)
        if self.qk_norm == "full_width":
            q, k = self.q_norm(q.reshape(B, L, -1)), self.k_norm(k)
        if self.clip_qkv is not None:
            q, k, v = (mx.clip(t, -self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        # Heads first: [B, heads, L, D]. For one token [B, 1, heads, D] is the same memory, so a single
        # reshape does it (a reshape and a transpose are two operations per projection and step).
        heads = ((self.num_heads, q), (self.num_kv_heads, k), (self.num_kv_heads, v))
        if L == 1:
            q, k, v = (t.reshape(B, n, 1, self.head_dim) for n, t in heads)
        else:
            q, k, v = (t.reshape(B, L, n, self.head_dim) for n, t in heads)
        if self.qk_norm in ("rms", "offset_rms", "unit_rms"):
            # Per head (the last axis), either order. Llama 4 normalises after RoPE; a rotation keeps
            # each head's norm, so before is the same.
            q, k = self.q_norm(q), self.k_norm(k)
        if L > 1:
            q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))

        if self.rope is not None:
            q = self.rope(q, offset=offset)
            k = self.rope(k, offset=offset)
        if self.query_temperature is not None:
            q = self._temper(q, offset)
        return self._attend_heads(q, k, v, cache, B, L, gate if self.output_gate else None)

    def _plain_rope(self) -> bool:
        """Whether the heads get RoPE and nothing else (no q/k norms, clipping, output gate or query
        temperature): from a joined projection, `ops.rotated_heads` may then make them in one operation."""
        return (self.rope is not None and self.qk_norm is None and self.clip_qkv is None
                and not self.output_gate and self.query_temperature is None)

    def _attend_heads(self, q, k, v, cache, B: int, L: int, gate: mx.array | None = None) -> mx.array:
        """The rest of the layer from heads-first q [B, H, L, D] and k, v [B, H_kv, L, D]: the cache,
        the mask, attention, the output gate and projection."""
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
            mask = cache.mask(L)
        elif self.sliding_window is not None and L > self.sliding_window:
            mask = window_mask(L, L, L, self.sliding_window)
        elif self.attention_chunk is not None and L > self.attention_chunk:
            mask = window_mask(L, L, L, None, chunk=self.attention_chunk)
        else:
            mask = "causal" if L > 1 else None

        if isinstance(k, tuple):  # a QuantizedKVCache hands back (packed, scales, biases)
            out = ops.flatten_heads(self._attend_quantized(q, k, v, mask, cache), B, L)
        else:
            out = self._attend(q, k, v, mask, flat=True)
        if gate is not None:
            out = out * mx.sigmoid(gate.reshape(B, L, -1))
        return self.o_proj(out)

    def _temper(self, q: mx.array, offset: int | mx.array) -> mx.array:
        """Queries [B, H, L, D] at positions offset.. (an array [B]: per row) scaled by Llama 4's
        attention temperature (in float32, as the reference computes the factors)."""
        floor_scale, attn_scale = self.query_temperature
        positions = mx.arange(q.shape[2], dtype=mx.float32)
        if isinstance(offset, mx.array):
            positions = (offset[:, None].astype(mx.float32) + positions)[:, None]  # [B, 1, L]
        else:
            positions = positions + offset
        scales = mx.log1p(mx.floor((positions + 1.0) / floor_scale)) * attn_scale + 1.0
        return (q * scales[..., None]).astype(q.dtype)

    def _attend_quantized(self, q, k, v, mask, cache):
        """Attention over a quantized KV cache (full-attention layers only: make_cache keeps
        sliding-window and chunked layers in float, so the mask is plain causal or a batch's)."""
        return ops.quantized_attention(q, k, v, self.scale, cache.bits, cache.group_size, mask,
                                       self.logit_softcap, self.get("sinks"))

    def _attend(self, q, k, v, mask, flat: bool = False):
        """[B, H, L, Dv], or with `flat` [B, L, H * Dv] (see `ops.attention`)."""
        return ops.attention(q, k, v, self.scale, mask, self.logit_softcap, self.get("sinks"), flat=flat)
