"""How quantized weights are computed with on MLX's CPU backend: memory traded for speed.

MLX's CPU `quantized_matmul` is a plain loop (~1 GB/s of weights), while an fp32 GEMM/GEMV goes
through BLAS. Measured on the 2-core development machine with MKL (576x1536 weight, 4-bit):

| rows M | quantized_matmul | dequantize + fp32 GEMM | resident fp32 |
|---|---|---|---|
| 1 | 0.86 ms | 1.66 ms | 0.07 ms |
| 2 | 1.61 ms | 1.27 ms | |
| 8 | 6.22 ms | 1.58 ms | |
| 512 | 284 ms | 6.4 ms | 5.5 ms |

Hence two policies, chosen per model at load time (`--cpu-weights`):

- `fp32`: dequantize every quantized linear layer once, at load, and keep the fp32 copy resident
  (8x the 4-bit size). Fastest for prefill and decode.
- `quantized`: keep 4-bit weights; calls with at least `DEQUANT_MIN_ROWS` rows (prefill) dequantize
  the layer's weight on the fly and use the fp32 GEMM; single-row decode keeps the quantized kernel.
- `auto` (default): `fp32` when the fp32 copy fits `FP32_BUDGET_FRACTION` of physical memory.
- `mlx`: leave MLX's own quantized kernels alone (the reference path, for A/B comparisons).

GPUs (Metal, CUDA) are left alone: their quantized kernels are the fast path.
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from metal_kernels import backend_name
from mlxmodels.errors import OrchardError

MODES = ("auto", "fp32", "quantized", "mlx")
DEQUANT_MIN_ROWS = 2  # from the table above: dequantize + GEMM already wins at two rows
FP32_BUDGET_FRACTION = 0.25  # a 1B model (~5 GB fp32) fits a 24 GB machine; a 3B (~13 GB) does not


class PrefillDequantizedLinear(nn.QuantizedLinear):
    """A quantized linear layer that runs multi-row inputs as dequantize + fp32 GEMM."""

    def __call__(self, x: mx.array) -> mx.array:
        rows = x.size // x.shape[-1]
        if rows < DEQUANT_MIN_ROWS:
            return super().__call__(x)
        w = mx.dequantize(self["weight"], self["scales"], self.get("biases"), self.group_size, self.bits, self.mode)
        y = x @ w.astype(x.dtype).T
        return y + self["bias"] if "bias" in self else y


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def fp32_budget() -> float:
    """The most memory `auto` lets the fp32 copies take."""
    return FP32_BUDGET_FRACTION * physical_memory()


def describe_policy(policy: str, requested: str, extra_bytes: int, fp32_needed: int) -> str | None:
    """One line for stats and benchmarks: what the policy chose and what it costs; None off the CPU."""
    if policy == "fp32":
        why = f", under the auto budget of {fp32_budget() / 1e9:.1f} GB" if requested == "auto" else ""
        return f"fp32 copies of the quantized weights (+{extra_bytes / 1e9:.2f} GB{why})"
    if policy == "quantized":
        why = (f"; fp32 copies would need {fp32_needed / 1e9:.1f} GB, over the auto budget of "
               f"{fp32_budget() / 1e9:.1f} GB" if requested == "auto" else "")
        return f"quantized weights, prefill as dequantize + GEMM{why}"
    return None


def _quantized_linears(model: nn.Module) -> list[tuple[str, nn.QuantizedLinear]]:
    return [(p, m) for p, m in model.named_modules() if type(m) is nn.QuantizedLinear]


def _tied_quantized_head(model: nn.Module):
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if getattr(model, "tie_embeddings", False) and isinstance(embed, nn.QuantizedEmbedding):
        return embed
    return None


def fp32_bytes(model: nn.Module) -> int:
    """Memory the resident fp32 copies would take."""
    total = sum(m.scales.shape[0] * m.scales.shape[1] * m.group_size * 4 for _, m in _quantized_linears(model))
    head = _tied_quantized_head(model)
    if head is not None:
        total += head.scales.shape[0] * head.scales.shape[1] * head.group_size * 4
    return total


def _dequantized(m) -> mx.array:
    return mx.dequantize(m.weight, m.scales, m.get("biases"), m.group_size, m.bits, m.mode).astype(mx.float32)


def apply_cpu_weight_policy(model: nn.Module, mode: str = "auto") -> tuple[str, int]:
    """Rewrite the model's quantized layers for the CPU backend; returns (policy used, extra bytes)."""
    if mode not in MODES:
        raise OrchardError(f"--cpu-weights must be one of {', '.join(MODES)}, got '{mode}'")
    if backend_name() != "cpu" or mode == "mlx":
        return "native", 0
    linears = _quantized_linears(model)
    head = _tied_quantized_head(model)
    if not linears and head is None:
        return "native", 0  # a float checkpoint: already the fast path
    cost = fp32_bytes(model)
    if mode == "auto":
        mode = "fp32" if cost <= fp32_budget() else "quantized"
    replacements = []
    for path, layer in linears:
        if mode == "fp32":
            weight = _dequantized(layer)
            new = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in layer)
            new.weight = weight
            if "bias" in layer:
                new.bias = layer.bias
            mx.eval(new.parameters())  # one layer at a time: peak memory stays one layer above the result
        else:
            # Same parameters, different __call__: switch the class rather than re-building (and
            # re-quantizing) the layer.
            layer.__class__ = PrefillDequantizedLinear
            continue
        replacements.append((path, new))
    if replacements:
        model.update_modules(tree_unflatten(replacements))
    if head is not None and mode == "fp32":
        # The tied LM head is the largest matvec of a small model: give it its own fp32 copy.
        weight = _dequantized(head)
        model.lm_head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        model.lm_head.weight = weight
        model.tie_embeddings = False
        mx.eval(weight)
    return mode, cost if mode == "fp32" else 0
