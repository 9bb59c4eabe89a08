"""RMS normalisation, in the plain form, Gemma's `(1 + weight)` form and without a weight (Llama 4)."""

import mlx.core as mx
import mlx.nn as nn


class RMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight, self.eps)


class OffsetRMSNorm(RMSNorm):
    """Gemma stores the norm weight as an offset from one: the scale is `1 + weight`."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__(dims, eps)
        self.weight = mx.zeros((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, 1.0 + self.weight, self.eps)


class UnitRMSNorm(nn.Module):
    """RMS normalisation without a learned scale (Llama 4's q/k "L2 norm": x / sqrt(mean(x^2) + eps))."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, None, self.eps)
