"""Let glibc keep freed memory for reuse instead of handing it back to the kernel, and back a loaded
model's weights with 2 MB pages (Linux only).

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

Decode streams every weight once per token. With 4 KB pages a thread walking a weight larger than its
caches crosses a page every 4 KB, where the hardware prefetcher stops and the TLB misses, so the
weights are backed with transparent huge pages (2 MB): `madvise(MADV_HUGEPAGE)` and, where the kernel
has it (Linux 6.1+), `MADV_COLLAPSE` to do it now rather than whenever khugepaged gets there (the
gain on Gemma 3 270M's decode, with its 189 MB LM head, is in docs/performance.md, "Second pass").
Where THP is off or the calls fail, nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25  # Linux's madvise advice numbers (asm-generic/mman-common.h)
HUGE_PAGE = 2 * 1024 * 1024
# Arrays from this size on count; smaller ones (norm weights, biases) are covered only where they sit
# between larger ones.
SMALLEST_ADVISED = 64 * 1024
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


def _merged_ranges(ranges: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """[start, end) address ranges joined where they overlap or lie within `gap` of each other."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def back_with_huge_pages(arrays, platform: str = sys.platform) -> int:
    """Ask Linux to back the memory under `arrays` (evaluated MLX arrays: a model's weights) with 2 MB
    pages; returns the bytes it moved to them now (0 where it could not: another OS, THP disabled, an
    old kernel that only takes the advice for later). Weights load one after another, so most lie in
    a few long runs of memory: the runs are advised as a whole, the 2 MB pages inside each."""
    if not platform.startswith("linux"):
        return 0
    try:
        import numpy as np

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError, ImportError):
        return 0
    madvise.argtypes, madvise.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
    ranges = []
    for a in arrays:
        if a.nbytes < SMALLEST_ADVISED:
            continue
        try:
            start = np.asarray(memoryview(a)).ctypes.data  # MLX's buffer itself, not a copy
        except (TypeError, ValueError, BufferError):
            continue
        ranges.append((start, start + a.nbytes))
    collapsed = 0
    for start, end in _merged_ranges(ranges, HUGE_PAGE):
        low, high = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
        if high <= low or madvise(low, high - low, MADV_HUGEPAGE) != 0:
            continue
        if madvise(low, high - low, MADV_COLLAPSE) == 0:
            collapsed += high - low
    return collapsed
