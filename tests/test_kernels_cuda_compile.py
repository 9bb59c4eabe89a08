"""The CUDA twins of the kernels compile, checked with NVRTC on a machine without a GPU.

Each launch the public functions make is wrapped the way MLX's `cuda_kernel` wraps it and compiled
for Hopper (metal_kernels/cuda_check.py). One instantiation per kernel source, dtype and bit width:
the code paths `if constexpr` picks; group sizes and activations only change constants. Skipped
where the NVRTC wheels are not installed (the test extra installs them on x86-64 Linux).
"""

import pytest

from metal_kernels import cuda_check, kernels

pytestmark = pytest.mark.skipif(not cuda_check.available(), reason="NVRTC wheels not installed (x86-64 Linux only)")


@pytest.fixture(scope="module")
def nvrtc():
    return cuda_check.Nvrtc(cuda_check.cuda_root())


@pytest.fixture(scope="module")
def launches():
    return cuda_check.unique_launches(representative=True)


def test_every_kernel_dtype_and_bit_width_compiles_as_cuda(nvrtc, launches):
    assert {launch.kernel for launch in launches} == set(kernels.ALL)
    for launch in launches:
        ok, log = nvrtc.compile(cuda_check.cuda_source(launch), launch.kernel.name, "compute_90a")
        assert ok, f"{launch.kernel.source} {launch.call['template']}:\n{log}"


def test_a_prelude_missing_a_metal_name_fails_to_compile(nvrtc, launches, monkeypatch):
    # The check must be able to fail: without the prelude's simd_sum the matvec body does not compile.
    monkeypatch.setattr(kernels, "CUDA_PRELUDE", kernels.CUDA_PRELUDE.replace("simd_sum", "simd_total"))
    launch = next(launch for launch in launches if launch.kernel is kernels.QMV)
    ok, log = nvrtc.compile(cuda_check.cuda_source(launch), launch.kernel.name, "compute_90a")
    assert not ok and "simd_sum" in log
