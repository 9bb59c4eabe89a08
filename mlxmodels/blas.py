"""Give MLX's CPU backend a real BLAS (Linux only).

The `mlx[cpu]` wheel links the reference netlib BLAS: a 512x576 @ 576x1536 fp32 matmul takes ~245 ms
on the development machine, ~5.5 ms with MKL (45x). libmlx resolves `cblas_sgemm` and friends
dynamically, so a library that exports the standard CBLAS symbols, loaded with RTLD_GLOBAL *before*
`mlx.core` is imported, takes over (the same as LD_PRELOAD).

Order of choice: `ORCHARD_BLAS=/path/lib.so` (or `ORCHARD_BLAS=none` to keep MLX's own), the pip
`mkl` wheel (a default dependency on Linux x86-64), a system OpenBLAS or MKL. This module must not
import mlx: it runs first, from `mlxmodels/__init__.py`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from dataclasses import dataclass


@dataclass
class BlasChoice:
    name: str  # "mkl", "openblas", a path, or "mlx built-in (netlib)"
    path: str | None
    note: str = ""  # why the fast path is off, when it is

    def describe(self) -> str:
        return self.name + (f" ({self.note})" if self.note else "")


BUILTIN = "mlx built-in (netlib)"
_choice: BlasChoice | None = None


def _candidates() -> list[tuple[str, str]]:
    prefixes = dict.fromkeys([sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))])
    found = []
    for prefix in prefixes:
        for path in sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True):
            found.append(("mkl", path))
    for name in ("openblas", "mkl_rt"):
        path = ctypes.util.find_library(name)
        if path:
            found.append(("openblas" if name == "openblas" else "mkl", path))
    for path in ("/usr/lib/x86_64-linux-gnu/libopenblas.so.0", "/usr/lib/aarch64-linux-gnu/libopenblas.so.0"):
        if os.path.exists(path):
            found.append(("openblas", path))
    return found


def _load(path: str) -> str | None:
    """Load `path` globally; None if it worked, else why not."""
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        return f"cannot load {path}: {e}"
    if not hasattr(lib, "cblas_sgemm"):
        return f"{path} does not export cblas_sgemm"
    return None


def select(environ=os.environ, platform: str = sys.platform, modules=sys.modules) -> BlasChoice:
    """Pick and load the BLAS once per process; later calls return the first answer."""
    global _choice
    if _choice is not None:
        return _choice
    _choice = _select(environ, platform, modules)
    return _choice


def _select(environ, platform: str, modules) -> BlasChoice:
    if not platform.startswith("linux"):
        return BlasChoice("system (Accelerate/Metal)" if platform == "darwin" else BUILTIN, None)
    requested = environ.get("ORCHARD_BLAS", "").strip()
    if requested.lower() == "none":
        return BlasChoice(BUILTIN, None, "ORCHARD_BLAS=none")
    if "mlx.core" in modules:
        return BlasChoice(BUILTIN, None, "mlx was imported before Orchard, so no faster BLAS could be applied")
    if requested:
        problem = _load(requested)
        if problem:
            return BlasChoice(BUILTIN, None, f"ORCHARD_BLAS: {problem}")
        return BlasChoice(os.path.basename(requested), requested)
    problems = []
    for name, path in _candidates():
        problem = _load(path)
        if problem is None:
            return BlasChoice(name, path)
        problems.append(problem)
    return BlasChoice(BUILTIN, None, "no MKL or OpenBLAS found" if not problems else problems[0])


def current() -> BlasChoice:
    return _choice or BlasChoice(BUILTIN, None, "selection has not run")
