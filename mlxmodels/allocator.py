"""Let glibc keep freed memory for reuse instead of handing it back to the kernel (Linux only).

MLX's CPU backend allocates arrays with malloc. glibc serves blocks above its mmap threshold
(128 KB, rising adaptively) with a fresh `mmap` and unmaps them on free, so every large temporary
(a prefill's 511 x 1536 activations, a decode step's 49152 logits) arrives as untouched pages the
kernel must fault in and zero again. Measured on the 2-core development machine: an exp over 2.35M
floats took 12.7 ms into a fresh buffer and 5.3 ms into a reused one; SmolLM2's 512-token prefill
ran ~5% faster and its decode ~10% faster with the settings below.

Raising the mmap threshold to glibc's maximum (32 MB on 64-bit) and the trim threshold to 1 GB keeps
such blocks on the heap, where they are reused. The cost is resident memory that stays at its
high-water mark after a peak (the peak itself is unchanged). A `MALLOC_*_` environment variable set
by the user wins: then nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit for the threshold on 64-bit
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def tune(environ=os.environ, platform: str = sys.platform) -> bool:
    """Apply the settings once per process; whether they are in effect."""
    global _applied
    if _applied is None:
        _applied = _tune(environ, platform)
    return _applied


def _tune(environ, platform: str) -> bool:
    if not platform.startswith("linux") or any(k.startswith("MALLOC_") for k in environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, say): leave its allocator alone
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
