"""Mamba (Mamba-1): a stack of residual blocks, each RMSNorm -> selective-SSM mixer, no attention.

Parameter names follow Hugging Face's (`backbone.embeddings`, `backbone.layers.N.mixer.*`,
`backbone.norm_f`, `lm_head`). Each layer's cache is an `SSMCache` (conv window + scan state),
whose size does not grow with the context. Mamba-2 (mamba2.py) reuses this skeleton with its own
mixer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import SSMCache
from mlxmodels.config import ConfigReader
from mlxmodels.errors import ConfigError
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.ssm import MambaMixer


@dataclass
class ModelArgs:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    state_size: int
    conv_kernel: int
    intermediate_size: int
    time_step_rank: int
    layer_norm_epsilon: float
    tie_word_embeddings: bool
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        c = ConfigReader(config)
        hidden = c.require("hidden_size")
        inner = c.get("intermediate_size", None, int)
        if inner is None:
            inner = c.get("expand", 2, int) * hidden
        rank = config.get("time_step_rank", "auto")
        if rank == "auto":
            rank = math.ceil(hidden / 16)
        elif not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise ConfigError(f"{c.source}: field 'time_step_rank' must be a positive int or \"auto\", got {rank!r}")
        return cls(
            model_type=config.get("model_type", "mamba"),
            hidden_size=hidden,
            num_hidden_layers=c.require("num_hidden_layers"),
            vocab_size=c.require("vocab_size"),
            state_size=c.require("state_size"),
            conv_kernel=c.require("conv_kernel"),
            intermediate_size=inner,
            time_step_rank=rank,
            layer_norm_epsilon=c.get("layer_norm_epsilon", 1e-5, float),
            tie_word_embeddings=c.get("tie_word_embeddings", True, bool),
            use_bias=c.get("use_bias", False, bool),
            use_conv_bias=c.get("use_conv_bias", True, bool),
            hidden_act=c.get("hidden_act", "silu", str),
        )


class ResidualBlock(nn.Module):
    def __init__(self, mixer: nn.Module, hidden: int, eps: float):
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(hidden, eps)

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        return x + self.mixer(self.norm(x), cache)


class Backbone(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, layers: list, eps: float):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, hidden)
        self.layers = layers
        self.norm_f = RMSNorm(hidden, eps)

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        h = self.embeddings(inputs)
        cache = cache if cache is not None else [None] * len(self.layers)
        for layer, layer_cache in zip(self.layers, cache):
            h = layer(h, layer_cache)
        return self.norm_f(h)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        layers = [ResidualBlock(self.make_mixer(args), args.hidden_size, args.layer_norm_epsilon)
                  for _ in range(args.num_hidden_layers)]
        self.backbone = Backbone(args.vocab_size, args.hidden_size, layers, args.layer_norm_epsilon)
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    @staticmethod
    def make_mixer(args: ModelArgs) -> nn.Module:
        return MambaMixer(
            args.hidden_size, args.intermediate_size, args.state_size, args.conv_kernel, args.time_step_rank,
            args.use_bias, args.use_conv_bias, args.hidden_act,
        )

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        h = self.backbone(inputs, cache)
        if self.tie_embeddings:
            return self.backbone.embeddings.as_linear(h)
        return self.lm_head(h)

    @property
    def layers(self):
        return self.backbone.layers

    def make_cache(self) -> list:
        return [SSMCache() for _ in self.layers]

    def sanitize(self, weights: dict) -> dict:
        out = {}
        for name, value in weights.items():
            if name.endswith("conv1d.weight") and value.ndim == 3 and value.shape[1] == 1 and value.shape[2] != 1:
                value = value.swapaxes(1, 2)  # PyTorch's [C, 1, K] -> MLX's [C, K, 1]
            out[name] = value
        if self.tie_embeddings:
            for suffix in ("weight", "scales", "biases"):
                out.pop(f"lm_head.{suffix}", None)
        return out
