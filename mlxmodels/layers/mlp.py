"""The feed-forward blocks: gated, SwiGLU (Llama, Qwen, Mistral) or GeGLU (Gemma), and plain
(`MLP`: Nemotron-H's up -> relu^2 -> down)."""

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.errors import ConfigError
from mlxmodels.layers import ops

ACTIVATIONS = {
    "silu": nn.silu,
    "swish": nn.silu,
    # Gemma's "gelu_pytorch_tanh" is the tanh approximation of GELU.
    "gelu_pytorch_tanh": nn.gelu_approx,
    "gelu_tanh": nn.gelu_approx,
    "gelu": nn.gelu,
    "relu2": nn.relu2,  # relu(x)^2 (Nemotron-H)
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ConfigError(f"unsupported activation '{name}' (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def gated_activation(name: str):
    """The function (gate, up) -> act(gate) * up for activation `name` (`up` None: gate is [gate | up])."""
    return ops.gated(activation(name), name)


def clamped_swiglu(limit: float, alpha: float):
    """gpt-oss's gated activation (gate, up) -> (up' + 1) * gate' * sigmoid(alpha * gate'), where
    gate' = min(gate, limit) and up' = clip(up, -limit, limit)."""

    def gated(gate: mx.array, up: mx.array) -> mx.array:
        gate = mx.minimum(gate, limit)
        up = mx.clip(up, -limit, limit)
        return (up + 1.0) * (gate * ops.sigmoid(alpha * gate))

    return gated


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)); `fused` (Phi-3): one `gate_up_proj` whose output is [gate | up]."""

    def __init__(self, dims: int, hidden_dims: int, act: str = "silu", bias: bool = False, fused: bool = False):
        super().__init__()
        if fused:
            self.gate_up_proj = nn.Linear(dims, 2 * hidden_dims, bias=bias)
        else:
            self.gate_proj = nn.Linear(dims, hidden_dims, bias=bias)
            self.up_proj = nn.Linear(dims, hidden_dims, bias=bias)
        self.down_proj = nn.Linear(hidden_dims, dims, bias=bias)
        self.gated = gated_activation(act)

    def __call__(self, x: mx.array) -> mx.array:
        if "gate_up_proj" in self:
            return self.down_proj(self.gated(self.gate_up_proj(x)))  # [gate | up]: no split needed
        return self.down_proj(self.gated(self.gate_proj(x), self.up_proj(x)))


class MLP(nn.Module):
    """down(act(up(x))): the non-gated feed-forward block."""

    def __init__(self, dims: int, hidden_dims: int, act: str, bias: bool = False):
        super().__init__()
        self.up_proj = nn.Linear(dims, hidden_dims, bias=bias)
        self.down_proj = nn.Linear(hidden_dims, dims, bias=bias)
        self.act = activation(act)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.act(self.up_proj(x)))
