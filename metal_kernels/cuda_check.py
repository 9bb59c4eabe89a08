"""Compile every CUDA twin instantiation with NVRTC, without a GPU.

    pip install "nvidia-cuda-nvrtc==13.*" "nvidia-cuda-runtime==13.*" "nvidia-cuda-crt==13.*" "nvidia-cuda-cccl==13.*"
    python -m metal_kernels.cuda_check [--arch compute_90a]

The public kernel functions are called on the golden shapes (metal_kernels.golden) with their
launches captured; each is wrapped the way MLX's `cuda_kernel` wraps a body (its default header,
`CUDA_PRELUDE` + the kernel's headers, a `__global__` signature from the input and output dtypes,
template arguments as `constexpr`/`using` lines) and compiled with the options MLX passes to NVRTC.
MLX's own device header is replaced by a stub giving what the bodies use (the half types), since
it ships inside libmlx.so. A machine without a GPU can thus see that an edited body still compiles
as CUDA (tests/test_kernels_cuda_compile.py does, on a representative third); only a GPU run
(docs/gpu.md) shows it computes the right thing.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import mlx.core as mx

CUDA_TYPES = {mx.float32: "float", mx.float16: "__half", mx.bfloat16: "__nv_bfloat16", mx.int32: "int32_t",
              mx.uint32: "uint32_t", mx.uint8: "uint8_t", mx.bool_: "bool"}
UTILS_HEADER = "mlx/backend/cuda/device/utils.cuh"
UTILS_STUB = "#pragma once\n#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n"


def cuda_source(launch) -> str:
    """The translation unit MLX builds for this launch (mlx/backend/cuda/custom_kernel.cpp)."""
    from metal_kernels.kernels import CUDA_PRELUDE

    kernel, call = launch.kernel, launch.call
    params = [f"    const {CUDA_TYPES[a.dtype]}* {name}" for name, a in zip(kernel.inputs, launch.inputs)]
    params += [f"    {CUDA_TYPES[d]}* {name}" for name, d in zip(kernel.outputs, call["output_dtypes"])]
    constants = []
    for name, value in call["template"]:
        if isinstance(value, bool):
            constants.append(f"  constexpr bool {name} = {str(value).lower()};")
        elif isinstance(value, int):
            constants.append(f"  constexpr int {name} = {value};")
        else:
            constants.append(f"  using {name} = {CUDA_TYPES[value]};")
    return (f'\n#include "{UTILS_HEADER}"\n\n#include <cooperative_groups.h>\n\n'
            + CUDA_PRELUDE + kernel.header
            + "namespace mlx::core::cu {\n\nnamespace cg = cooperative_groups;\n\n"
            + f"__global__ void {kernel.name}(\n" + ",\n".join(params) + ") {\n"
            + "\n".join(constants) + "\n\n" + kernel.body + "\n}\n\n} // namespace mlx::core::cu\n")


WHEELS = "'nvidia-cuda-nvrtc==13.*' 'nvidia-cuda-runtime==13.*' 'nvidia-cuda-crt==13.*' 'nvidia-cuda-cccl==13.*'"


def cuda_root() -> Path | None:
    """The installed wheels' nvidia/cu13 folder (NVRTC and CUDA's headers), or None."""
    try:
        import nvidia
    except ImportError:
        return None
    for base in nvidia.__path__:
        root = Path(base) / "cu13"
        if (root / "lib" / "libnvrtc.so.13").is_file() and (root / "include" / "cuda_fp16.h").is_file():
            return root
    return None


def available() -> bool:
    """Whether NVRTC and the CUDA headers are installed (the test extra installs them on x86-64 Linux)."""
    return cuda_root() is not None


class Nvrtc:
    def __init__(self, root: Path):
        self.lib = ctypes.CDLL(str(root / "lib" / "libnvrtc.so.13"))
        self.include = root / "include"

    def compile(self, source: str, name: str, arch: str) -> tuple[bool, str]:
        """(compiled, log)."""
        prog = ctypes.c_void_p()
        headers = (ctypes.c_char_p * 1)(UTILS_STUB.encode())
        names = (ctypes.c_char_p * 1)(UTILS_HEADER.encode())
        if self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 1, headers, names):
            return False, "nvrtcCreateProgram failed"
        try:
            options = [b"--device-as-default-execution-space", f"--gpu-architecture={arch}".encode(),
                       f"--include-path={self.include}".encode(), f"--include-path={self.include / 'cccl'}".encode()]
            status = self.lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(prog, log)
            return status == 0, log.value.decode(errors="replace").strip()
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def unique_launches(representative: bool = False) -> list:
    """The golden shapes' launches, one per distinct CUDA source; `representative`: one per kernel
    source, dtype and bit width (the code paths `if constexpr` chooses), group sizes and activations
    aside, about a third of them."""
    from metal_kernels import golden

    chosen = {}
    for launch in golden.captured_launches():
        template = dict(launch.call["template"])
        key = ((launch.kernel, str(template["T"]), template.get("BITS")) if representative
               else cuda_source(launch))
        chosen.setdefault(key, launch)
    return list(chosen.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metal_kernels.cuda_check", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="compute_90a", help="NVRTC --gpu-architecture (default: Hopper)")
    args = parser.parse_args(argv)
    root = cuda_root()
    if root is None:
        print(f"metal_kernels.cuda_check: NVRTC and CUDA 13's headers are not installed; pip install {WHEELS}",
              file=sys.stderr)
        return 2
    nvrtc = Nvrtc(root)
    launches = unique_launches()
    failed = 0
    for launch in launches:
        ok, log = nvrtc.compile(cuda_source(launch), launch.kernel.name, args.arch)
        template = ", ".join(f"{n}={v}" for n, v in launch.call["template"])
        if not ok or log:
            print(f"{'FAILED' if not ok else 'warning'}: {launch.kernel.source} [{template}]\n{log}")
        failed += not ok
    print(f"{len(launches) - failed} of {len(launches)} CUDA instantiations compile for {args.arch}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
