"""Orchard's kernels as data, and one `launch` that runs them on Metal, CUDA or the CPU emulator.

A `Kernel` names a body in sources/*.metal, the headers it is compiled with, its inputs and outputs.
The body is written once in the subset of Metal that the emulator models; on CUDA it is compiled
through `CUDA_PRELUDE`, a thin macro layer that spells the same Metal names in CUDA (address spaces
erased, `threadgroup` as `__shared__`, thread attributes from threadIdx/blockIdx, simd functions as
warp shuffles). Launches always use grids that are whole multiples of the threadgroup, so Metal's
smaller edge groups and CUDA's whole blocks never differ.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import mlx.core as mx

SOURCES = Path(__file__).parent / "sources"

# The Metal spellings the kernels use, defined for mx.fast.cuda_kernel. MLX puts `header` at file
# scope after its own includes, writes every input as `const T*` (so kernels read sizes and scalars
# from small arrays, never 0-d ones), turns template args into `using T = ...` / `constexpr int`
# lines inside the function, injects no thread attributes, and launches ceil(grid / block) whole
# blocks. Bodies use only T for element types, so __half / __nv_bfloat16 need no aliases.
CUDA_PRELUDE = r"""
#define device
#define constant
#define thread
#define threadgroup __shared__
#define ORCHARD_NEG_INF (-__int_as_float(0x7f800000))
#define thread_position_in_grid make_uint3(blockIdx.x * blockDim.x + threadIdx.x, blockIdx.y * blockDim.y + threadIdx.y, blockIdx.z * blockDim.z + threadIdx.z)
#define threadgroup_position_in_grid blockIdx
#define thread_position_in_threadgroup threadIdx
#define orchard_linear_tid (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z))
#define thread_index_in_simdgroup (orchard_linear_tid % 32u)
#define simdgroup_index_in_threadgroup (orchard_linear_tid / 32u)
enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2 };
__device__ inline void threadgroup_barrier(mem_flags) { __syncthreads(); }
template <typename U> __device__ inline U simd_sum(U x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
template <typename U> __device__ inline U simd_max(U x) {
  for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
"""


@dataclass(frozen=True)
class Kernel:
    source: str  # file name under sources/ (or an absolute path, for test-only variants)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    headers: tuple[str, ...] = ("common.h",)

    @property
    def body(self) -> str:
        return (SOURCES / self.source).read_text()  # an absolute `source` replaces SOURCES

    @property
    def header(self) -> str:
        return "".join((SOURCES / h).read_text() for h in self.headers)

    @property
    def name(self) -> str:
        # Named by a hash of the text: two kernels with one name and different sources have run the
        # wrong code in MLX before (fixed in 0.32.1 for Metal, later for CUDA).
        digest = hashlib.sha256((self.header + "\0" + self.body).encode()).hexdigest()[:12]
        return f"orchard_{Path(self.source).stem}_{digest}"


QMV = Kernel("qmv.metal", ("x", "w", "scales", "biases", "dims"), ("y",))
QSWIGLU = Kernel("qswiglu.metal", ("x", "wg", "sg", "bg", "wu", "su", "bu", "dims"), ("out",))
ATTENTION = Kernel("decode_attention.metal", ("q", "k", "v", "params", "scale"), ("o_part", "m_part", "l_part"),
                   ("common.h", "kv_float.h"))
QUANT_ATTENTION = Kernel(
    "decode_attention.metal",
    ("q", "k", "k_scales", "k_biases", "v", "v_scales", "v_biases", "params", "scale"),
    ("o_part", "m_part", "l_part"), ("common.h", "kv_quant.h"))
REDUCE = Kernel("decode_reduce.metal", ("o_part", "m_part", "l_part", "params"), ("out",))

ALL = (QMV, QSWIGLU, ATTENTION, QUANT_ATTENTION, REDUCE)


@lru_cache(maxsize=None)
def metal_object(kernel: Kernel):
    return mx.fast.metal_kernel(name=kernel.name, input_names=list(kernel.inputs), output_names=list(kernel.outputs),
                                source=kernel.body, header=kernel.header)


@lru_cache(maxsize=None)
def cuda_object(kernel: Kernel):
    return mx.fast.cuda_kernel(name=kernel.name, input_names=list(kernel.inputs), output_names=list(kernel.outputs),
                               source=kernel.body, header=CUDA_PRELUDE + kernel.header)


_MSL_CACHE: dict[tuple, str] = {}


def msl_for(kernel: Kernel, inputs: list[mx.array], template: list, grid, threadgroup, output_shapes,
            output_dtypes) -> str:
    """The MSL MLX generates for this instantiation (depends on dtypes, template values, and which
    inputs are small enough for the constant address space)."""
    from metal_kernels import emulate, lint

    key = (kernel, tuple((a.dtype, a.ndim == 0, a.size < 8) for a in inputs),
           tuple((n, str(v)) for n, v in template), tuple(output_dtypes))
    if key not in _MSL_CACHE:
        problems = lint.lint(kernel.body, kernel.source) + [
            p for h in kernel.headers for p in lint.lint((SOURCES / h).read_text(), h)]
        if problems:
            raise emulate.EmulatorError("\n".join(problems))
        _MSL_CACHE[key] = emulate.generated_msl(
            metal_object(kernel), inputs, template=template, grid=grid, threadgroup=threadgroup,
            output_shapes=output_shapes, output_dtypes=output_dtypes)
    return _MSL_CACHE[key]


def launch(kernel: Kernel, inputs: list[mx.array], *, template: list, grid: tuple, threadgroup: tuple,
           output_shapes: list, output_dtypes: list, target: str) -> list[mx.array]:
    """Run `kernel` on `target` ('metal', 'cuda' or 'emulate')."""
    if any(g % t for g, t in zip(grid, threadgroup)):
        raise ValueError(f"{kernel.name}: grid {grid} is not a multiple of threadgroup {threadgroup}")
    call = dict(template=template, grid=grid, threadgroup=threadgroup, output_shapes=output_shapes,
                output_dtypes=output_dtypes)
    if target == "metal":
        return metal_object(kernel)(inputs=inputs, **call)
    if target == "cuda":
        return cuda_object(kernel)(inputs=inputs, **call)
    if target == "emulate":
        from metal_kernels import emulate

        msl = msl_for(kernel, inputs, template, grid, threadgroup, output_shapes, output_dtypes)
        if _captured is not None:
            _captured.append(Launch(kernel, inputs, call, msl))
            return [mx.zeros(tuple(s), dtype=d) for s, d in zip(output_shapes, output_dtypes)]
        return emulate.run(msl, inputs, output_shapes, output_dtypes, grid, threadgroup,
                           source_name=Path(kernel.source).name)
    raise ValueError(f"unknown kernel target {target!r}")


@dataclass(frozen=True)
class Launch:
    kernel: Kernel
    inputs: list
    call: dict  # template, grid, threadgroup, output_shapes, output_dtypes
    msl: str  # the Metal source MLX generates for it


_captured: list[Launch] | None = None


@contextlib.contextmanager
def capture():
    """Within this block, emulated launches record a `Launch` instead of running and return zeros:
    how the golden MSL files (metal_kernels.golden) and the CUDA compile check
    (metal_kernels.cuda_check) see the exact calls the public functions make."""
    global _captured
    previous, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = previous
