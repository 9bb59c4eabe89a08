"""Sibling projections joined into one matrix at load time, on the CPU backend.

Attention's q, k and v projections read the same input, as do a gated MLP's gate and up
projections. Stacking their weights (output rows one after another) makes one matmul of each
group: a decode step of a small model runs ~40% fewer matmuls, and on MLX's CPU backend every
operation has a fixed cost that weighs as much as a small matrix's arithmetic. The layers already
take the joined form (`qkv_proj`, `gate_up_proj`: Phi-3 ships it) and split the product.

Every output row is computed as before (the native quantized op treats rows independently), so the
results are the same; only layers with one layout are joined (same class, bits, group size, mode,
bias or none). It runs where the CPU weight policy has rewritten a quantized model's layers
(`loading.assemble`: the native op's dispatch or fp32 copies). Float checkpoints keep their layout,
so a loaded float model saves under its checkpoint's names; Metal and CUDA keep theirs too (not
measured there).
"""

from __future__ import annotations

import copy

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cpu_weights import DispatchedQuantizedLinear
from mlxmodels.layers.attention import Attention
from mlxmodels.layers.mlp import GatedMLP

# (module class, the projections to join, the joined projection's name)
_GROUPS = ((Attention, ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
           (GatedMLP, ("gate_proj", "up_proj"), "gate_up_proj"))


def _layout(layer: nn.Module) -> tuple | None:
    """What must match for layers to be stacked; None for a kind that is never joined (any other
    class, e.g. a distributed shard's, may do more in its __call__ than one product)."""
    if type(layer) in (nn.QuantizedLinear, DispatchedQuantizedLinear):
        return (type(layer), layer.group_size, layer.bits, layer.mode, layer["scales"].dtype,
                "biases" in layer, "bias" in layer)
    if type(layer) is nn.Linear:
        return (type(layer), layer["weight"].dtype, "bias" in layer)
    return None


def _stacked(layers: list) -> nn.Module | None:
    """One layer computing what `layers` compute, outputs side by side; None if they differ in layout."""
    layout = _layout(layers[0])
    if layout is None or any(_layout(layer) != layout for layer in layers[1:]):
        return None
    joined = copy.copy(layers[0])  # same class and settings; its parameters are replaced below
    for name in ("weight", "scales", "biases", "bias"):
        if name in layers[0]:
            joined[name] = mx.concatenate([layer[name] for layer in layers], axis=0)
    mx.eval(joined.parameters())  # group by group: memory peaks one group above the model
    return joined


def fuse_projections(model: nn.Module) -> int:
    """Join each attention's q/k/v and each gated MLP's gate/up projections in place; returns how many
    groups were joined."""
    joined = 0
    # Only the parents are held here, so each group's separate weights are freed once it is joined.
    kinds = {kind for kind, _, _ in _GROUPS}
    parents = [module for _, module in model.named_modules() if type(module) in kinds]  # subclasses call their own
    for module in parents:
        for kind, names, fused_name in _GROUPS:
            if type(module) is not kind or not all(name in module for name in names):
                continue
            stacked = _stacked([module[name] for name in names])
            if stacked is None:
                continue
            for name in names:
                module.pop(name)
            module[fused_name] = stacked
            joined += 1
    return joined
