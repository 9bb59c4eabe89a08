"""What machine a benchmark ran on, and how fast its memory is.

The roofline needs the machine's memory bandwidth. Apple chips and NVIDIA GPUs have published
figures (tables below, keyed by the chip name the OS reports); a plain CPU's figure depends on its
DIMMs and channels, so it is measured with a large copy (`measure_copy_bandwidth`) on every run,
and the best figure seen is cached.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlxmodels.cpu_weights import physical_memory

# Unified-memory bandwidth in GB/s (Apple's published figures). Longest names first, so
# "Apple M4 Max" is not taken for "Apple M4". The Max variants list their top (more-GPU-core)
# configuration; binned Max parts (M3 Max 14-core CPU: 300, M4 Max 14-core CPU: 410) are noted below.
APPLE_BANDWIDTH_GBPS = {
    "M1 Ultra": 800, "M1 Max": 400, "M1 Pro": 200, "M1": 68.25,
    "M2 Ultra": 800, "M2 Max": 400, "M2 Pro": 200, "M2": 100,
    "M3 Ultra": 819, "M3 Max": 400, "M3 Pro": 150, "M3": 100,
    "M4 Max": 546, "M4 Pro": 273, "M4": 120,
    "M5": 153,
}
# Binned parts whose bandwidth differs from the full chip, keyed by (chip, performance + efficiency CPU cores).
APPLE_BINNED = {("M3 Max", 14): 300, ("M4 Max", 14): 410}

# NVIDIA data-centre and workstation GPUs (GB/s, vendor figures), matched as substrings of the device name.
CUDA_BANDWIDTH_GBPS = {
    "H200": 4800, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "GH200": 4000,
    "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "L4": 300,
    "A10G": 600, "A10": 600, "RTX 4090": 1008, "RTX 3090": 936, "T4": 320,
}


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def orchard_commit() -> str | None:
    """The git commit of the Orchard checkout, when running from one (editable installs)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    out = _run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"])
    if out and _run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"]):
        out += "-dirty"
    return out or None


def _linux_cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mac_info() -> dict:
    info = {"chip": _run(["sysctl", "-n", "machdep.cpu.brand_string"]), "os": f"macOS {platform.mac_ver()[0]}"}
    gpu = _run(["system_profiler", "SPDisplaysDataType"])
    m = re.search(r"Total Number of Cores:\s*(\d+)", gpu)
    info["gpu_cores"] = int(m[1]) if m else None
    power = _run(["pmset", "-g", "batt"])
    info["power_source"] = ("battery" if "Battery Power" in power else "ac") if power else None
    therm = _run(["pmset", "-g", "therm"])
    m = re.search(r"CPU_Speed_Limit\s*=\s*(\d+)", therm)
    info["thermal"] = (f"cpu speed limit {m[1]}%" if m else "nominal") if therm else None
    return info


def machine_info() -> dict:
    """The machine, OS and accelerator, as recorded with every result."""
    import mlx.core as mx

    from metal_kernels import backend_name

    backend = backend_name()
    info: dict = {
        "chip": None, "cpu": None, "cpu_cores": os.cpu_count(), "memory_gb": round(physical_memory() / 1e9, 1),
        "os": f"{platform.system()} {platform.release()}", "arch": platform.machine(), "backend": backend,
        "gpu": None, "gpu_cores": None, "power_source": None, "thermal": None,
    }
    if sys.platform == "darwin":
        info.update(_mac_info())
        info["cpu"] = info["chip"]
    else:
        info["cpu"] = _linux_cpu_model()
        info["chip"] = info["cpu"]
    if backend in ("cuda", "metal"):
        try:
            name = mx.device_info().get("device_name")
        except Exception:  # device_info is best-effort: older MLX builds lack fields
            name = None
        info["gpu"] = name
        if backend == "cuda" and name:
            info["chip"] = name
    return info


def apple_bandwidth(chip: str, cpu_cores: int | None = None) -> float | None:
    name = chip.replace("Apple", "").strip()
    for key in sorted(APPLE_BANDWIDTH_GBPS, key=len, reverse=True):
        if re.fullmatch(rf"{re.escape(key)}\b.*", name):
            return float(APPLE_BINNED.get((key, cpu_cores), APPLE_BANDWIDTH_GBPS[key]))
    return None


def cuda_bandwidth(name: str) -> float | None:
    for key in sorted(CUDA_BANDWIDTH_GBPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return float(CUDA_BANDWIDTH_GBPS[key])
    return None


def measure_copy_bandwidth(size_mb: int = 256, repeats: int = 5) -> float:
    """Best-of-`repeats` memory bandwidth of a large array copy, in GB/s (bytes read + written).

    The buffer is far larger than any CPU cache, so the copy streams from DRAM. numpy's copy is
    one memcpy, the same access pattern as a weight-streaming matvec.
    """
    import numpy as np

    src = np.ones(size_mb * (1 << 20) // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def memory_bandwidth(machine: dict, cache_file: Path | None = None, measure: bool = True) -> tuple[float | None, str]:
    """(GB/s, where the figure comes from) for the memory the backend computes from."""
    if machine.get("backend") == "cuda" and machine.get("gpu"):
        bw = cuda_bandwidth(machine["gpu"])
        return (bw, "vendor spec") if bw else (None, f"unknown GPU '{machine['gpu']}'")
    if sys.platform == "darwin" and machine.get("chip"):
        bw = apple_bandwidth(machine["chip"], machine.get("cpu_cores"))
        if bw:
            return bw, "Apple spec"
    # A CPU's copy bandwidth reads low while other processes use the memory bus, so every run
    # measures again (about half a second) and the cache keeps the best figure seen so far.
    key = f"{machine.get('cpu')}|{machine.get('cpu_cores')}|{machine.get('memory_gb')}"
    cached = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cached = {}
    best = cached.get(key)
    if measure:
        bw = measure_copy_bandwidth()
        if best is None or bw > best:
            best = bw
            if cache_file is not None:
                cached[key] = bw
                try:
                    cache_file.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cache_file.with_suffix(".tmp")
                    tmp.write_text(json.dumps(cached))
                    os.replace(tmp, cache_file)
                except OSError:  # a cache we cannot write only loses the best-so-far figure
                    pass
    if best is None:
        return None, "not measured"
    return float(best), "measured copy, best seen"


def engine_info() -> dict:
    import mlx.core as mx

    from mlxmodels import blas

    return {
        "name": "orchard", "version": _version("orchard"), "commit": orchard_commit(),
        "mlx": mx.__version__, "mlx_lm": _version("mlx-lm"), "python": platform.python_version(),
        "blas": blas.current().describe(),
    }
