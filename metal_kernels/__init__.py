"""Custom kernels and the choice of backend they run on.

The engine asks this package which backend MLX is running on, and calls the kernels through the
public functions below; each picks the custom kernel (Metal source, CUDA twin, or the CPU emulator
when ORCHARD_KERNELS=emulate) or MLX's built-in ops. See docs/kernels.md.
"""

from metal_kernels.backend import backend_name, compute_dtype_for, kernel_mode
from metal_kernels.ops import (
    decode_attention,
    quantized_decode_attention,
    quantized_matmul,
    quantized_swiglu,
)

__all__ = [
    "backend_name",
    "compute_dtype_for",
    "kernel_mode",
    "quantized_matmul",
    "quantized_swiglu",
    "decode_attention",
    "quantized_decode_attention",
]
