"""The gated feed-forward block: SwiGLU (Llama, Qwen, Mistral) or GeGLU (Gemma)."""

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.errors import ConfigError
from mlxmodels.layers import cpu_math

ACTIVATIONS = {
    "silu": nn.silu,
    "swish": nn.silu,
    # Gemma's "gelu_pytorch_tanh" is the tanh approximation of GELU.
    "gelu_pytorch_tanh": nn.gelu_approx,
    "gelu_tanh": nn.gelu_approx,
    "gelu": nn.gelu,
}


# act(gate) * up fused, for the CPU backend (see cpu_math): the same function, several times faster.
_CPU_GATED = {"silu": "silu_mul", "swish": "silu_mul", "gelu_pytorch_tanh": "gelu_approx_mul", "gelu_tanh": "gelu_approx_mul"}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ConfigError(f"unsupported activation '{name}' (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def gated_activation(name: str):
    """The function (gate, up) -> act(gate) * up for activation `name`."""
    act, fused = activation(name), _CPU_GATED.get(name)

    def gated(gate: mx.array, up: mx.array) -> mx.array:
        if fused is not None and cpu_math.enabled(gate):
            return getattr(cpu_math, fused)(gate, up)
        return act(gate) * up

    return gated


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x))."""

    def __init__(self, dims: int, hidden_dims: int, act: str = "silu", bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dims, hidden_dims, bias=bias)
        self.up_proj = nn.Linear(dims, hidden_dims, bias=bias)
        self.down_proj = nn.Linear(hidden_dims, dims, bias=bias)
        self.gated = gated_activation(act)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.gated(self.gate_proj(x), self.up_proj(x)))
