"""How quantized weights are computed with on MLX's CPU backend: memory traded for speed.

MLX's CPU `quantized_matmul` is a plain loop (~1 GB/s of weights), while an fp32 GEMM/GEMV goes
through BLAS. Measured on the 2-core development machine with MKL (576x1536 weight, 4-bit):

| rows M | quantized_matmul | dequantize + fp32 GEMM | resident fp32 |
|---|---|---|---|
| 1 | 0.86 ms | 1.66 ms | 0.07 ms |
| 2 | 1.61 ms | 1.27 ms | |
| 8 | 6.22 ms | 1.58 ms | |
| 512 | 284 ms | 6.4 ms | 5.5 ms |

Orchard's native CPU op (metal_kernels/cpu, built at install where a compiler is present) reads the
4-bit weights themselves with SIMD integer dot products, faster than the fp32 copies for few rows.
Which implementation runs for a call is the op layer's choice (metal_kernels/quantized.py); this
module picks, per model at load time (`--cpu-weights`), what stays in memory:

- `fp32`: dequantize every quantized linear layer once, at load, and keep the fp32 copy resident
  (8x the 4-bit size). Fastest prefill; the fastest decode when the native op is not built.
- `quantized`: keep the quantized weights; their layers call the op layer: the native op for few
  rows (decode) when it is built, MLX's quantized_matmul otherwise, and dequantize + fp32 GEMM for
  many rows (prefill).
- `auto` (default): `quantized` when the native op is built and covers every quantized layer,
  else `fp32` when the fp32 copy fits `FP32_BUDGET_FRACTION` of physical memory.
- `mlx`: leave MLX's own quantized kernels alone (the reference path, for A/B comparisons).

GPUs (Metal, CUDA) are left alone: their quantized kernels are the fast path.
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from metal_kernels import backend_name, quantized_linear
from metal_kernels import cpu as native_cpu
from metal_kernels.quantized import describe as describe_kernels, native_enabled
from mlxmodels.errors import OrchardError

MODES = ("auto", "fp32", "quantized", "mlx")
FP32_BUDGET_FRACTION = 0.25  # a 1B model (~5 GB fp32) fits a 24 GB machine; a 3B (~13 GB) does not


class DispatchedQuantizedLinear(nn.QuantizedLinear):
    """A quantized linear layer whose product goes through the op layer (metal_kernels/quantized.py)."""

    def __call__(self, x: mx.array) -> mx.array:
        y = quantized_linear(x, self["weight"], self["scales"], self.get("biases"), self.group_size, self.bits,
                             self.mode)
        return y + self["bias"] if "bias" in self else y


class DispatchedQuantizedEmbedding(nn.QuantizedEmbedding):
    """A quantized embedding whose use as the (tied) LM head goes through the op layer. Where its
    scales were narrowed (`_compact_scales`), lookups still dequantize in the compute dtype."""

    lookup_dtype = None

    def __call__(self, x: mx.array) -> mx.array:
        if self.lookup_dtype is None:
            return super().__call__(x)
        biases = self.get("biases")
        return mx.dequantize(self["weight"][x], self["scales"][x].astype(self.lookup_dtype),
                             None if biases is None else biases[x].astype(self.lookup_dtype),
                             self.group_size, self.bits, self.mode)

    def as_linear(self, x: mx.array) -> mx.array:
        return quantized_linear(x, self["weight"], self["scales"], self.get("biases"), self.group_size, self.bits,
                                self.mode)


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def fp32_budget() -> float:
    """The most memory `auto` lets the fp32 copies take."""
    return FP32_BUDGET_FRACTION * physical_memory()


def _why_not_native() -> str:
    """Why `auto` did not keep the weights quantized for the native op (the notice a machine that could
    not build it gets)."""
    if not native_cpu.available():
        return f"; native CPU kernel {native_cpu.unavailable_reason()}"
    if not native_enabled():
        return "; native CPU kernel off (ORCHARD_KERNELS=builtin)"
    return "; a quantization layout the native CPU kernel does not cover"


def describe_policy(policy: str, requested: str, extra_bytes: int, fp32_needed: int) -> str | None:
    """One line for stats and benchmarks: what the policy chose and what it costs; None off the CPU."""
    if policy == "fp32":
        why = f", under the auto budget of {fp32_budget() / 1e9:.1f} GB{_why_not_native()}" if requested == "auto" else ""
        return f"fp32 copies of the quantized weights (+{extra_bytes / 1e9:.2f} GB{why})"
    if policy == "quantized":
        why = ""
        if requested == "auto" and not native_enabled():
            why = (f"; fp32 copies would need {fp32_needed / 1e9:.1f} GB, over the auto budget of "
                   f"{fp32_budget() / 1e9:.1f} GB")
        return f"quantized weights; {describe_kernels()}{why}"
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


def _native_covers(layers) -> bool:
    return all(native_cpu.supports(m.bits, m.group_size, m.mode) for m in layers)


def _compact_scales(layer) -> bool:
    """float32 scales and biases back to float16 (or bfloat16) where that is exact: checkpoints store
    them so and the compute-dtype policy widened them. The native op reads them in either type, and
    decode then reads 1 bit per weight less (at groups of 32). True if they were narrowed."""
    names = [n for n in ("scales", "biases") if n in layer]
    if layer["scales"].dtype != mx.float32:
        return False
    for narrow in (mx.float16, mx.bfloat16):
        cast = {n: layer[n].astype(narrow) for n in names}
        if all(mx.array_equal(cast[n].astype(mx.float32), layer[n]).item() for n in names):
            layer.update(cast)
            return True
    return False


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
        if native_enabled() and _native_covers([m for _, m in linears] + ([head] if head is not None else [])):
            mode = "quantized"  # the native op reads the 4-bit weights faster than BLAS reads fp32 copies
        else:
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
            layer.__class__ = DispatchedQuantizedLinear
            if native_enabled():
                _compact_scales(layer)
            continue
        replacements.append((path, new))
    if replacements:
        model.update_modules(tree_unflatten(replacements))
    if mode == "quantized":
        for _, module in model.named_modules():
            if type(module) is nn.QuantizedEmbedding:
                module.__class__ = DispatchedQuantizedEmbedding  # a tied LM head goes through the op layer
                if native_enabled() and _compact_scales(module):
                    module.lookup_dtype = mx.float32
    if head is not None and mode == "fp32":
        # The tied LM head is the largest matvec of a small model: give it its own fp32 copy.
        weight = _dequantized(head)
        model.lm_head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        model.lm_head.weight = weight
        model.tie_embeddings = False
        mx.eval(weight)
    return mode, cost if mode == "fp32" else 0
