"""RMS normalisation, in the plain form, Gemma's `(1 + weight)` form and without a weight (Llama 4)."""

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.layers import ops


class RMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return ops.rms_norm(x, self._scale(), self.eps)

    def add_and_norm(self, x: mx.array, delta: mx.array) -> tuple[mx.array, mx.array]:
        """(x + delta, this norm of it): a residual add and the norm after it, one operation on the CPU."""
        return ops.add_rms_norm(x, delta, self._scale(), self.eps)

    def _scale(self) -> mx.array:
        """What x is multiplied by after normalising."""
        return self.weight


class OffsetRMSNorm(RMSNorm):
    """Gemma stores the norm weight as an offset from one: the scale is `1 + weight`."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__(dims, eps)
        self.weight = mx.zeros((dims,))

    def _scale(self) -> mx.array:
        """`1 + weight`, computed once per weight array rather than once per call (a decode step
        would add an operation per norm; Gemma 3 has four norms a layer and two per-head ones).
        Kept outside the module's parameters, and made again when the weight is replaced (loading,
        a dtype change)."""
        cached = self.__dict__.get("_plus_one")
        if cached is None or cached[0] is not self.weight:
            cached = (self.weight, 1.0 + self.weight)
            self.__dict__["_plus_one"] = cached
        return cached[1]


class UnitRMSNorm(nn.Module):
    """RMS normalisation without a learned scale (Llama 4's q/k "L2 norm": x / sqrt(mean(x^2) + eps))."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return ops.rms_norm(x, None, self.eps)

    def add_and_norm(self, x: mx.array, delta: mx.array) -> tuple[mx.array, mx.array]:
        """(x + delta, this norm of it), as RMSNorm's."""
        return ops.add_rms_norm(x, delta, None, self.eps)
