"""The gated feed-forward block: SwiGLU (Llama, Qwen, Mistral) or GeGLU (Gemma)."""

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.errors import ConfigError

ACTIVATIONS = {
    "silu": nn.silu,
    "swish": nn.silu,
    # Gemma's "gelu_pytorch_tanh" is the tanh approximation of GELU.
    "gelu_pytorch_tanh": nn.gelu_approx,
    "gelu_tanh": nn.gelu_approx,
    "gelu": nn.gelu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ConfigError(f"unsupported activation '{name}' (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x))."""

    def __init__(self, dims: int, hidden_dims: int, act: str = "silu", bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dims, hidden_dims, bias=bias)
        self.up_proj = nn.Linear(dims, hidden_dims, bias=bias)
        self.down_proj = nn.Linear(hidden_dims, dims, bias=bias)
        self.act = activation(act)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
