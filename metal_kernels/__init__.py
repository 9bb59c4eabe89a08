"""Custom kernels and the choice of backend they run on.

The engine asks this package which backend MLX is running on, and calls the kernels through the
public functions below; each picks the custom kernel (Metal source, CUDA twin, or the CPU emulator
when ORCHARD_KERNELS=emulate) or MLX's built-in ops. See docs/kernels.md. `quantized_linear` is the
op layer for quantized weights on the CPU backend (Orchard's native op in `metal_kernels.cpu`,
dequantize + GEMM, or MLX's kernel; metal_kernels/quantized.py).
"""

from metal_kernels.backend import backend_name, kernel_mode
from metal_kernels.ops import (
    decode_attention,
    quantized_decode_attention,
    quantized_matmul,
    quantized_swiglu,
)
from metal_kernels.quantized import quantized_linear

__all__ = [
    "backend_name",
    "kernel_mode",
    "quantized_matmul",
    "quantized_linear",
    "quantized_swiglu",
    "decode_attention",
    "quantized_decode_attention",
]
