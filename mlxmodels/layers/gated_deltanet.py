"""Gated DeltaNet: the linear-attention mixer of Qwen3-Next and Qwen3.5.

Per token, projections give queries and keys (`num_key_heads` heads of `key_head_dim`), values and an
output gate z (`num_value_heads` heads of `value_head_dim`), and per value head a write strength b and
a decay input a. Then:

1. q, k and v (concatenated in that order, all heads) pass a causal depthwise conv (kernel K) with
   SiLU; the last K - 1 inputs are kept in the cache;
2. q and k are L2-normalised per head, q is scaled by key_head_dim^-0.5, and each key head is
   repeated for the num_value_heads / num_key_heads value heads it serves (consecutive ones);
3. beta = sigmoid(b) and the log decay g = -exp(A_log) * softplus(a + dt_bias) drive the gated delta
   rule (layers/delta_rule.py): a [key_head_dim, value_head_dim] state per value head;
4. the output is RMS-normalised per head (weighted), multiplied by SiLU(z), and projected back.

Checkpoints store the input projections in one of two layouts (`fused_projections`):
- Qwen3-Next: `in_proj_qkvz` and `in_proj_ba`, grouped by key head: for each key head its q, k, then
  the v and z of the value heads it serves; and its b's then a's;
- Qwen3.5: `in_proj_qkv` (all q, all k, all v: already the conv's order), `in_proj_z`, `in_proj_b`,
  `in_proj_a`.
They are used as stored (MLX-format checkpoints keep them so too); the fused layout is regrouped on
the fly, a few reshapes. The b/a projections are tiny and feed exponentials: they stay in float
(`Router`, which has no quantized form), as do conv1d, A_log, dt_bias and the norm.

The cache (`SSMCache`) holds the conv window [B, K - 1, conv channels] and the state
[B, num_value_heads, key_head_dim, value_head_dim] in float32: a fixed size whatever the context.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.layers.delta_rule import gated_delta_rule
from mlxmodels.layers.moe import Router
from mlxmodels.layers.ssm import GatedRMSNorm, causal_conv, softplus

# transformers' (and FLA's) epsilon of the q/k L2 normalisation: x / sqrt(sum(x^2) + eps).
L2_NORM_EPS = 1e-6


class GatedDeltaNet(nn.Module):
    def __init__(self, hidden: int, num_key_heads: int, num_value_heads: int, key_head_dim: int,
                 value_head_dim: int, conv_kernel: int, eps: float, fused_projections: bool,
                 chunk_size: int = 64):
        super().__init__()
        if num_value_heads % num_key_heads:
            raise ValueError(f"{num_value_heads} value heads are not a multiple of {num_key_heads} key heads")
        self.num_key_heads, self.num_value_heads = num_key_heads, num_value_heads
        self.key_head_dim, self.value_head_dim = key_head_dim, value_head_dim
        self.chunk_size = chunk_size
        key_dim, value_dim = num_key_heads * key_head_dim, num_value_heads * value_head_dim
        self.conv_dim = 2 * key_dim + value_dim
        self.fused_projections = fused_projections
        if fused_projections:
            self.in_proj_qkvz = nn.Linear(hidden, 2 * key_dim + 2 * value_dim, bias=False)
            self.in_proj_ba = Router(hidden, 2 * num_value_heads)
        else:
            self.in_proj_qkv = nn.Linear(hidden, self.conv_dim, bias=False)
            self.in_proj_z = nn.Linear(hidden, value_dim, bias=False)
            self.in_proj_b = Router(hidden, num_value_heads)
            self.in_proj_a = Router(hidden, num_value_heads)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel, groups=self.conv_dim, bias=False)
        self.dt_bias = mx.ones((num_value_heads,))
        self.A_log = mx.log(mx.arange(1, num_value_heads + 1, dtype=mx.float32))
        self.norm = GatedRMSNorm(value_head_dim, 1, eps, norm_before_gate=True)
        self.out_proj = nn.Linear(value_dim, hidden, bias=False)

    def _project(self, x: mx.array):
        """(qkv [B, L, conv_dim] in conv order, z [B, L, Hv, Dv], b [B, L, Hv], a [B, L, Hv])."""
        B, L, _ = x.shape
        Hv, Dv = self.num_value_heads, self.value_head_dim
        if not self.fused_projections:
            z = self.in_proj_z(x).reshape(B, L, Hv, Dv)
            return self.in_proj_qkv(x), z, self.in_proj_b(x), self.in_proj_a(x)
        Hk, Dk = self.num_key_heads, self.key_head_dim
        per_key = Hv // Hk * Dv  # the v (and z) channels of the value heads one key head serves
        groups = self.in_proj_qkvz(x).reshape(B, L, Hk, 2 * Dk + 2 * per_key)
        q, k, v, z = mx.split(groups, [Dk, 2 * Dk, 2 * Dk + per_key], axis=-1)
        qkv = mx.concatenate([t.reshape(B, L, -1) for t in (q, k, v)], axis=-1)
        b, a = mx.split(self.in_proj_ba(x).reshape(B, L, Hk, -1), 2, axis=-1)
        return qkv, z.reshape(B, L, Hv, Dv), b.reshape(B, L, Hv), a.reshape(B, L, Hv)

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        B, L, _ = x.shape
        Hk, Hv, Dk, Dv = self.num_key_heads, self.num_value_heads, self.key_head_dim, self.value_head_dim
        window, state = cache.fetch() if cache is not None else (None, None)
        qkv, z, b, a = self._project(x)
        qkv, window = causal_conv(self.conv1d, qkv, window)
        q, k, v = mx.split(qkv, [Hk * Dk, 2 * Hk * Dk], axis=-1)
        q, k = (t.reshape(B, L, Hk, Dk).astype(mx.float32) for t in (q, k))
        # L2 normalisation as an RMS norm: x / sqrt(sum x^2 + eps) = rms_norm(x, eps / D) / sqrt(D);
        # the query's extra Dk^-0.5 makes its factor 1 / Dk.
        q = mx.fast.rms_norm(q, None, L2_NORM_EPS / Dk) * (1.0 / Dk)
        k = mx.fast.rms_norm(k, None, L2_NORM_EPS / Dk) * (1.0 / math.sqrt(Dk))
        if Hv != Hk:
            q, k = mx.repeat(q, Hv // Hk, axis=2), mx.repeat(k, Hv // Hk, axis=2)
        beta = mx.sigmoid(b.astype(mx.float32))
        dt = softplus(a.astype(mx.float32) + self.dt_bias.astype(mx.float32))
        g = -mx.exp(self.A_log.astype(mx.float32)) * dt
        o, state = gated_delta_rule(q, k, v.reshape(B, L, Hv, Dv), g, beta, state, self.chunk_size)
        if cache is not None:
            cache.update(window, state, L)
        o = self.norm(o, z)
        return self.out_proj(o.reshape(B, L, Hv * Dv))
