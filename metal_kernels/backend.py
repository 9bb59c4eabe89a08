"""Which MLX backend runs our arrays (what kernel dispatch keys on), and the ORCHARD_KERNELS switch.

The compute-dtype policy built on it is the engine's (`mlxmodels.loading.compute_dtype_for`)."""

import contextlib
import os
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


KERNEL_MODES = ("auto", "custom", "builtin", "emulate")
_RAW_ENVIRON = getattr(os.environ, "_data", None) if os.name == "posix" else None


_ENCODED_NAMES: dict = {}


def environment(name: str, default: str) -> str:
    """os.environ.get(name, default), without its cost for an unset variable (~3 us: it raises and
    catches a KeyError), which the op switches read on every call would pay several hundred times
    per decoded token."""
    if _RAW_ENVIRON is None:
        return os.environ.get(name, default)
    key = _ENCODED_NAMES.get(name)
    if key is None:
        key = _ENCODED_NAMES[name] = os.fsencode(name)
    value = _RAW_ENVIRON.get(key)  # os.environ stores encoded names and values here
    return default if value is None else os.fsdecode(value)


def kernel_mode() -> str:
    """How the public kernel functions run, from ORCHARD_KERNELS (read on every call, so tests and
    A/B runs can switch it): 'auto' (default) uses a custom kernel where it is the better choice on
    the running GPU, 'custom' forces the custom kernels on a GPU, 'builtin' forces MLX's built-in
    ops, 'emulate' runs the custom kernels through the CPU emulator (small shapes only)."""
    mode = environment("ORCHARD_KERNELS", "auto").strip().lower() or "auto"
    if mode not in KERNEL_MODES:
        raise ValueError(f"ORCHARD_KERNELS={mode!r} is not one of {', '.join(KERNEL_MODES)}")
    return mode


@contextlib.contextmanager
def environment_set(name: str, value: str):
    """Environment variable `name` set to `value` within the block, as it was (or unset) after it:
    for the switches read on every call (ORCHARD_KERNELS, ORCHARD_CPU_MATH)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
