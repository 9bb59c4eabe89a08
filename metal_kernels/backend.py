"""Which MLX backend runs our arrays, and the compute dtype that suits it."""

from functools import lru_cache

import mlx.core as mx


@lru_cache(maxsize=1)
def backend_name() -> str:
    """'metal', 'cuda' or 'cpu': where MLX's default device runs."""
    if mx.default_device() == mx.cpu:
        return "cpu"
    if mx.metal.is_available():
        return "metal"
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "cuda"
    return "cpu"


def compute_dtype_for(checkpoint_dtype: mx.Dtype) -> mx.Dtype:
    """The dtype to compute in for a checkpoint stored as `checkpoint_dtype`.

    GPUs keep the checkpoint's dtype (half-precision kernels are their fast path). MLX's CPU
    backend is the opposite: its fp16/bf16 kernels are scalar fallbacks, ~40x slower than fp32 for
    a 4-bit matvec, so on the CPU everything floating is computed in float32.
    """
    if backend_name() == "cpu":
        return mx.float32
    return checkpoint_dtype


KERNEL_MODES = ("auto", "custom", "builtin", "emulate")


def kernel_mode() -> str:
    """How the public kernel functions run, from ORCHARD_KERNELS (read on every call, so tests and
    A/B runs can switch it): 'auto' (default) uses a custom kernel where it is the better choice on
    the running GPU, 'custom' forces the custom kernels on a GPU, 'builtin' forces MLX's built-in
    ops, 'emulate' runs the custom kernels through the CPU emulator (small shapes only)."""
    import os

    mode = os.environ.get("ORCHARD_KERNELS", "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise ValueError(f"ORCHARD_KERNELS={mode!r} is not one of {', '.join(KERNEL_MODES)}")
    return mode
