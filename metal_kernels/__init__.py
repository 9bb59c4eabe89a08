"""Custom kernels and the choice of backend they run on.

The engine asks this package which backend MLX is running on; the kernels themselves (Metal
sources, CUDA twins and the CPU emulator) are dispatched from here by the same decision.
"""

from metal_kernels.backend import backend_name, compute_dtype_for

__all__ = ["backend_name", "compute_dtype_for"]
