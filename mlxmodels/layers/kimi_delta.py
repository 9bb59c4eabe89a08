"""Kimi Delta Attention (KDA, Kimi Linear's linear-attention mixer): the gated delta rule with one
forget rate per key channel.

Per token x:
- q, k, v = SiLU(causal depthwise conv(q_proj x, k_proj x, v_proj x)), kernel K, per head [H, D];
  q and k are L2-normalised (in float32, eps 1e-6 added to the sum of squares) and q scaled by D^-0.5;
- the forget gate, per key channel: g = -exp(A_log) * softplus(f_b(f_a(x)) + dt_bias), A_log one per head;
- beta = sigmoid(b_proj x), one per head;
- the state S [D, D] per head: S = exp(g) S; S += k (beta (v - S^T k))^T; o = S^T q (layers/delta_rule.py);
- the output: RMSNorm(o) * sigmoid(g_b(g_a(x))) per head (in float32), then o_proj.

The low-rank gate projections (f_a/f_b, g_a/g_b) and b_proj are small and steer the recurrence:
they stay in float (`FloatLinear` has no quantized form), like A_log, dt_bias and the conv kernels.

The three convolutions run as one depthwise conv over the concatenated q, k, v channels, so the
cache (`SSMCache`) holds one window [B, K - 1, 3 H D] beside the state [B, H, D, D] (float32): a
fixed size whatever the context length.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.layers.delta_rule import gated_delta_rule
from mlxmodels.layers.mlp import activation
from mlxmodels.layers.moe import Router as FloatLinear  # a bias-free linear map kept in float
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.ssm import softplus

CHUNK_SIZE = 64  # the reference's chunk; any size gives the same numbers


def l2_normalise(x: mx.array, eps: float = 1e-6) -> mx.array:
    """x / sqrt(sum(x^2) + eps) over the last axis: the reference adds eps inside the root (FLA's form)."""
    return x * mx.rsqrt((x * x).sum(axis=-1, keepdims=True) + eps)


class KimiDeltaAttention(nn.Module):
    """Parameter names and shapes follow the Kimi Linear checkpoints (`self_attn.q_conv1d`, `f_a_proj`,
    `A_log` [1, 1, H, 1], ...); convolution kernels in MLX's layout [channels, K, 1]."""

    def __init__(self, hidden: int, heads: int, head_dim: int, conv_kernel: int, eps: float, act: str = "silu"):
        super().__init__()
        self.heads, self.head_dim, self.conv_kernel = heads, head_dim, conv_kernel
        width = heads * head_dim
        self.q_proj = nn.Linear(hidden, width, bias=False)
        self.k_proj = nn.Linear(hidden, width, bias=False)
        self.v_proj = nn.Linear(hidden, width, bias=False)
        self.q_conv1d = nn.Conv1d(width, width, conv_kernel, groups=width, bias=False)
        self.k_conv1d = nn.Conv1d(width, width, conv_kernel, groups=width, bias=False)
        self.v_conv1d = nn.Conv1d(width, width, conv_kernel, groups=width, bias=False)
        self.f_a_proj = FloatLinear(hidden, head_dim)
        self.f_b_proj = FloatLinear(head_dim, width)
        self.dt_bias = mx.zeros((width,))
        self.A_log = mx.zeros((1, 1, heads, 1))
        self.b_proj = FloatLinear(hidden, heads)
        self.g_a_proj = FloatLinear(hidden, head_dim)
        self.g_b_proj = FloatLinear(head_dim, width)
        self.o_norm = RMSNorm(head_dim, eps)
        self.o_proj = nn.Linear(width, hidden, bias=False)
        self.act = activation(act)

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        B, L, _ = x.shape
        heads = (B, L, self.heads, self.head_dim)
        window, state = cache.fetch() if cache is not None else (None, None)
        qkv = mx.concatenate([self.q_proj(x), self.k_proj(x), self.v_proj(x)], axis=-1)
        qkv, window = self._short_conv(qkv, window)
        q, k, v = (t.reshape(heads) for t in mx.split(qkv, 3, axis=-1))
        q = l2_normalise(q.astype(mx.float32)) * self.head_dim**-0.5
        k = l2_normalise(k.astype(mx.float32))
        beta = mx.sigmoid(self.b_proj(x).astype(mx.float32))
        o, state = gated_delta_rule(q, k, v, self._log_decay(x), beta, state, CHUNK_SIZE)
        if cache is not None:
            cache.update(window, state, L)
        gate = self.g_b_proj(self.g_a_proj(x)).reshape(heads)
        return self.o_proj(self._gated_norm(o, gate).reshape(B, L, -1))

    def _short_conv(self, qkv: mx.array, window: mx.array | None) -> tuple[mx.array, mx.array]:
        """Causal depthwise conv of [B, L, 3 H D] after the cached window, then the activation.
        Returns (output, the last K - 1 inputs: the next call's window)."""
        if window is None:
            window = mx.zeros((qkv.shape[0], self.conv_kernel - 1, qkv.shape[-1]), dtype=qkv.dtype)
        full = mx.concatenate([window, qkv], axis=1)
        weight = mx.concatenate([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight], axis=0)
        out = mx.conv1d(full, weight, groups=qkv.shape[-1])
        return self.act(out), full[:, full.shape[1] - (self.conv_kernel - 1) :]

    def _log_decay(self, x: mx.array) -> mx.array:
        """The per-channel log forget rate g [B, L, H, D] (<= 0), in float32."""
        B, L, _ = x.shape
        f = self.f_b_proj(self.f_a_proj(x)).astype(mx.float32) + self.dt_bias.astype(mx.float32)
        rate = mx.exp(self.A_log.astype(mx.float32))  # [1, 1, H, 1]: one per head
        return -rate * softplus(f.reshape(B, L, self.heads, self.head_dim))

    def _gated_norm(self, o: mx.array, gate: mx.array) -> mx.array:
        """RMSNorm over each head's output times sigmoid(gate), in float32 as the reference computes it."""
        y = mx.fast.rms_norm(o.astype(mx.float32), self.o_norm.weight.astype(mx.float32), self.o_norm.eps)
        return (y * mx.sigmoid(gate.astype(mx.float32))).astype(o.dtype)
