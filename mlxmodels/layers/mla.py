"""Multi-head Latent Attention (DeepSeek-V2/V3, Kimi Linear): keys and values from a shared latent.

Per token, `kv_a_proj_with_mqa` gives a latent c (kv_lora_rank wide) and a rope key k_r
(qk_rope_head_dim) that every head shares; c is RMS-normalised and `kv_b_proj` expands it into
each head's k_nope (qk_nope_head_dim) and v (v_head_dim). A head's key is [k_nope, k_r] and its
query [q_nope, q_r], from `q_proj` or, with `q_lora_rank`, from q_a_proj -> q_a_layernorm -> q_b_proj.
RoPE, where the family uses it, rotates only q_r and k_r (Kimi Linear's MLA uses none).

The cache (`LatentKVCache`) keeps c and k_r per token, not the expanded keys and values. Prefill
expands the latents through kv_b_proj and attends as usual. Decode absorbs the expansion instead:
with kv_b_proj = [W_k; W_v] per head, q_nope . (W_k c) = (W_k^T q_nope) . c and the output is
W_v (sum_t p_t c_t), so a step reads each cached latent once and never expands the context.
Under `--kv-bits` the cache is a `QuantizedLatentKVCache` ([c | k_r] rows quantized), which decode
reads packed through quantized matmuls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.layers import ops
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE


@dataclass
class MLASpec:
    hidden_size: int
    num_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    scale: float
    q_lora_rank: int | None = None  # None: a plain q_proj
    rope: RoPE | None = None  # None: no positional encoding (Kimi Linear)
    bias: bool = False  # on q_a_proj, kv_a_proj_with_mqa and o_proj (the configs' `attention_bias`)
    norm_eps: float = 1e-6  # q_a_layernorm and kv_a_layernorm (the references' default, not rms_norm_eps)
    # kv_a_proj_with_mqa and kv_b_proj as `FloatLinear`s, which conversion and loading leave in float:
    # their errors reach every cached key and value (DeepSeek; see models/deepseek_v2.py).
    float_latent_projections: bool = False


class FloatLinear(nn.Module):
    """A linear map (weight [outputs, inputs], optional bias) with no `to_quantized`, so
    `nn.quantize` and loading's quantization predicate keep it in float."""

    def __init__(self, input_dims: int, output_dims: int, bias: bool = False):
        super().__init__()
        scale = 1.0 / math.sqrt(input_dims)
        self.weight = mx.random.uniform(-scale, scale, (output_dims, input_dims))
        if bias:
            self.bias = mx.zeros((output_dims,))

    def __call__(self, x: mx.array) -> mx.array:
        y = x @ self.weight.T
        return y + self["bias"] if "bias" in self else y


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, spec: MLASpec):
        super().__init__()
        s = spec
        self.num_heads, self.scale, self.rope = s.num_heads, s.scale, s.rope
        self.kv_lora_rank = s.kv_lora_rank
        self.nope, self.rope_dims, self.v_dims = s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim
        q_width = s.num_heads * (s.qk_nope_head_dim + s.qk_rope_head_dim)
        if s.q_lora_rank is None:
            self.q_proj = nn.Linear(s.hidden_size, q_width, bias=False)
        else:
            self.q_a_proj = nn.Linear(s.hidden_size, s.q_lora_rank, bias=s.bias)
            self.q_a_layernorm = RMSNorm(s.q_lora_rank, s.norm_eps)
            self.q_b_proj = nn.Linear(s.q_lora_rank, q_width, bias=False)
        latent_linear = FloatLinear if s.float_latent_projections else nn.Linear
        self.kv_a_proj_with_mqa = latent_linear(s.hidden_size, s.kv_lora_rank + s.qk_rope_head_dim, bias=s.bias)
        self.kv_a_layernorm = RMSNorm(s.kv_lora_rank, s.norm_eps)
        self.kv_b_proj = latent_linear(s.kv_lora_rank, s.num_heads * (s.qk_nope_head_dim + s.v_head_dim), bias=False)
        self.o_proj = nn.Linear(s.num_heads * s.v_head_dim, s.hidden_size, bias=s.bias)

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        B, L, _ = x.shape
        if "q_proj" in self:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.reshape(B, L, self.num_heads, -1).transpose(0, 2, 1, 3)
        q_nope, q_rope = mx.split(q, [self.nope], axis=-1)
        latents, rope_keys = mx.split(self.kv_a_proj_with_mqa(x), [self.kv_lora_rank], axis=-1)
        latents = self.kv_a_layernorm(latents)[:, None]  # [B, 1, L, kv_lora_rank]: one "head" shared by all
        rope_keys = rope_keys[:, None]  # [B, 1, L, qk_rope_head_dim]

        if self.rope is not None:
            offset = cache.offset if cache is not None else 0
            q_rope = self.rope(q_rope, offset=offset)
            rope_keys = self.rope(rope_keys, offset=offset)
        quantized = getattr(cache, "quantized", False)  # a QuantizedLatentKVCache (--kv-bits)
        if cache is not None:
            fetched = cache.update_and_fetch(latents, rope_keys)
            mask = cache.mask(L)
            if not quantized:
                latents, rope_keys = fetched
            elif L > 1:  # a prefill expands the latents: the cached rows in float
                latents, rope_keys = cache.dequantized(fetched, x.dtype, self.kv_lora_rank)
        else:
            mask = "causal" if L > 1 else None

        if L == 1 and quantized:
            out = self._attend_absorbed_quantized(q_nope, q_rope, fetched, cache, mask)
        elif L == 1:
            out = self._attend_absorbed(q_nope, q_rope, latents, rope_keys, mask)
        else:
            out = self._attend_expanded(q_nope, q_rope, latents, rope_keys, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))

    def _attend_expanded(self, q_nope, q_rope, latents, rope_keys, mask):
        """Prefill: every cached latent expanded into per-head keys and values, then attention."""
        B, H, _, _ = q_nope.shape
        T = latents.shape[2]
        kv = self.kv_b_proj(latents).reshape(B, T, H, self.nope + self.v_dims).transpose(0, 2, 1, 3)
        k_nope, v = mx.split(kv, [self.nope], axis=-1)
        k = mx.concatenate([k_nope, mx.broadcast_to(rope_keys, (B, H, T, self.rope_dims))], axis=-1)
        q = mx.concatenate([q_nope, q_rope], axis=-1)
        return ops.attention(q, k, v, self.scale, mask)

    def _attend_absorbed(self, q_nope, q_rope, latents, rope_keys, mask=None):
        """Decode (one query, every cached position visible, or those `mask` [B, 1, 1, T] allows in a
        batch of sequences): attention in the latent space."""
        w = self._expansion().astype(q_nope.dtype)  # [H, nope + v, kv_lora_rank]
        w_k, w_v = w[:, : self.nope], w[:, self.nope :]
        q_latent = q_nope @ w_k  # [B, H, 1, kv_lora_rank]
        scores = q_latent @ latents.swapaxes(-1, -2) + q_rope @ rope_keys.swapaxes(-1, -2)
        weights = _softmax_visible(scores * self.scale, mask).astype(q_nope.dtype)
        return (weights @ latents) @ w_v.swapaxes(-1, -2)  # [B, H, 1, v_head_dim]

    def _attend_absorbed_quantized(self, q_nope, q_rope, rows, cache, mask=None):
        """Decode over a `QuantizedLatentKVCache`: the same latent-space attention, with the cached
        [latent | rope key] rows read packed by two quantized matmuls (scores against the rows, then
        the weighted sum of the rows, whose rope-key columns are dropped): nothing is dequantized."""
        w = self._expansion().astype(q_nope.dtype)
        w_k, w_v = w[:, : self.nope], w[:, self.nope :]
        q = mx.concatenate([q_nope @ w_k, q_rope], axis=-1)[:, :, 0]  # [B, H, kv_lora_rank + rope]
        packed, scales, biases = (a[:, 0] for a in rows)  # [B, T, ...]: the one shared "head"
        settings = dict(group_size=cache.group_size, bits=cache.bits)
        scores = mx.quantized_matmul(q, packed, scales, biases, transpose=True, **settings)  # [B, H, T]
        if mask is not None:
            mask = mask[:, :, 0]  # [B, 1, T], as the scores
        weights = _softmax_visible(scores * self.scale, mask).astype(q_nope.dtype)
        mixed = mx.quantized_matmul(weights, packed, scales, biases, transpose=False, **settings)
        return mixed[:, :, None, : self.kv_lora_rank] @ w_v.swapaxes(-1, -2)  # [B, H, 1, v_head_dim]

    def _expansion(self) -> mx.array:
        """kv_b_proj's weight as [heads, nope + v, kv_lora_rank], dequantized when stored quantized."""
        layer = self.kv_b_proj
        w = layer["weight"]
        if "scales" in layer:
            w = mx.dequantize(w, layer["scales"], layer.get("biases"), layer.group_size, layer.bits, layer.mode)
        return w.reshape(self.num_heads, self.nope + self.v_dims, self.kv_lora_rank)


def _softmax_visible(scores: mx.array, mask) -> mx.array:
    """Softmax in float32 over the last axis, of the scores `mask` allows (None: all; "causal" never
    reaches here, as decode has one query)."""
    scores = scores.astype(mx.float32)
    if isinstance(mask, mx.array):
        scores = mx.where(mask, scores, -mx.inf)
    return mx.softmax(scores, axis=-1)


def join_split_kv_b(weights: dict, prefix: str, quantization: dict | None) -> dict:
    """mlx-lm's MLA layers (deepseek_v3, kimi_linear) split kv_b_proj into `embed_q`
    [H, kv_lora_rank, nope] (transposed) and `unembed_out` [H, v, kv_lora_rank]: joined back into
    `{prefix}.kv_b_proj.weight`, in float (re-quantizing would add error to what mlx-lm computes)."""
    from mlxmodels.layers.moe import dequantize_router

    if f"{prefix}.embed_q.weight" not in weights:
        return weights
    for part in ("embed_q", "unembed_out"):
        weights = dequantize_router(weights, f"{prefix}.{part}", quantization)
    w_k = weights.pop(f"{prefix}.embed_q.weight").swapaxes(-1, -2)
    w_v = weights.pop(f"{prefix}.unembed_out.weight")
    weights[f"{prefix}.kv_b_proj.weight"] = mx.concatenate([w_k, w_v], axis=1).reshape(-1, w_v.shape[-1])
    return weights
