"""The emulator must catch what matters: bugs planted in copies of the real kernels
(tests/kernels/planted/), a grid that misses outputs, Metal-isms it erases, and any change in
the MSL that MLX generates for our kernels (tests/kernels/golden/)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlx.core as mx
import pytest

import metal_kernels as mk
from metal_kernels import emulate, golden, kernels, lint

PLANTED = Path(__file__).parent / "kernels" / "planted"
GOLDEN = Path(__file__).parent / "kernels" / "golden"


@pytest.fixture(autouse=True)
def emulated(monkeypatch):
    monkeypatch.setenv("ORCHARD_KERNELS", "emulate")


def _planted(kernel: kernels.Kernel, name: str) -> kernels.Kernel:
    return dataclasses.replace(kernel, source=str(PLANTED / name))


def _matvec_inputs():
    x = mx.random.normal((2, 128), key=mx.random.key(1))
    w, s, b = mx.quantize(mx.random.normal((5, 128), key=mx.random.key(2)), group_size=64, bits=4)
    return x, w, s, b


def _attention_inputs(S=40):
    keys = mx.random.split(mx.random.key(3), 3)
    q = mx.random.normal((1, 4, 1, 64), key=keys[0])
    k = mx.random.normal((1, 2, S, 64), key=keys[1])
    v = mx.random.normal((1, 2, S, 64), key=keys[2])
    return q, k, v


def test_the_unplanted_kernels_pass_on_the_same_inputs():
    # The control: the real kernels on the inputs the planted variants fail on.
    x, w, s, b = _matvec_inputs()
    assert mx.allclose(mk.quantized_matmul(x, w, s, b, 64, 4),
                       mx.quantized_matmul(x, w, s, b, transpose=True, group_size=64, bits=4), atol=1e-4).item()
    q, k, v = _attention_inputs()
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125)
    assert mx.allclose(mk.decode_attention(q, k, v, 0.125, chunk=16), ref, atol=1e-5).item()


def test_missing_barrier_is_a_race_between_thread_orders(monkeypatch):
    monkeypatch.setattr(kernels, "ATTENTION", _planted(kernels.ATTENTION, "missing_barrier.metal"))
    q, k, v = _attention_inputs()
    with pytest.raises(emulate.EmulatorError, match="differs between forward and .* thread order"):
        mk.decode_attention(q, k, v, 0.125, chunk=16)


def test_return_before_a_barrier_is_reported(monkeypatch):
    # With 4 simdgroups taking keys round-robin, a chunk of 2 keys leaves two simdgroups idle; the
    # planted variant lets them return before the merge barrier the others wait at.
    monkeypatch.setattr(kernels, "ATTENTION", _planted(kernels.ATTENTION, "early_return.metal"))
    q, k, v = _attention_inputs(S=6)
    with pytest.raises(emulate.EmulatorError, match=r"threadgroup_barrier at early_return.metal:\d+ reached by only 64 of 128 threads"):
        mk.decode_attention(q, k, v, 0.125, chunk=2)


def test_simd_sum_under_a_lane_condition_is_reported(monkeypatch):
    monkeypatch.setattr(kernels, "QMV", _planted(kernels.QMV, "simd_under_condition.metal"))
    with pytest.raises(emulate.EmulatorError, match=r"simd_sum at simd_under_condition.metal:46 reached by only 16 of 32 lanes"):
        mk.quantized_matmul(*_matvec_inputs(), 64, 4)


def test_out_of_bounds_read_is_caught_by_asan(monkeypatch):
    monkeypatch.setattr(kernels, "QMV", _planted(kernels.QMV, "out_of_bounds.metal"))
    with pytest.raises(emulate.EmulatorError, match=r"heap-buffer-overflow (.|\n)*out_of_bounds.metal:\d+"):
        mk.quantized_matmul(*_matvec_inputs(), 64, 4)


def test_too_small_grid_leaves_outputs_unwritten():
    x, w, s, b = _matvec_inputs()
    dims = mx.array([2, 5, 128], dtype=mx.int32)
    template = [("T", mx.float32), ("BITS", 4), ("GROUP_SIZE", 64), ("MAX_M", 8), ("ROWS_PER_GROUP", 2)]
    # 5 rows need 3 threadgroups of 2 rows; launch 2.
    with pytest.raises(emulate.EmulatorError, match="2 of 10 elements of output 0 were never written"):
        kernels.launch(kernels.QMV, [x, w, s, b, dims], template=template, grid=(128, 1, 1), threadgroup=(64, 1, 1),
                       output_shapes=[(2, 5)], output_dtypes=[mx.float32], target="emulate")


def test_double_fails_to_compile_even_without_the_lint():
    planted = _planted(kernels.QMV, "uses_double.metal")
    x, w, s, b = _matvec_inputs()
    inputs = [x, w, s, b, mx.array([2, 5, 128], dtype=mx.int32)]
    template = [("T", mx.float32), ("BITS", 4), ("GROUP_SIZE", 64), ("MAX_M", 8), ("ROWS_PER_GROUP", 2)]
    msl = emulate.generated_msl(kernels.metal_object(planted), inputs, template=template, grid=(192, 1, 1),
                                threadgroup=(64, 1, 1), output_shapes=[(2, 5)], output_dtypes=[mx.float32])
    with pytest.raises(emulate.EmulatorError, match="poisoned \"double\""):
        emulate.run(msl, inputs, [(2, 5)], [mx.float32], (192, 1, 1), (64, 1, 1))


def test_lint_rejects_what_the_emulator_erases(monkeypatch):
    assert lint.lint("const float* p = x;", "k.metal") == [
        "k.metal:1: pointer to float without an address space (device, constant, threadgroup or thread)"]
    assert lint.lint("double acc = 0;", "k.metal") == ["k.metal:1: Metal has no double"]
    assert lint.lint("const device float* p = x; y = a * b; threadgroup float* t = buf;") == []
    for kernel in kernels.ALL:  # our own sources are clean
        assert lint.lint(kernel.body, kernel.source) == []
        assert lint.lint(kernel.header, kernel.source) == []
    monkeypatch.setattr(kernels, "QMV", _planted(kernels.QMV, "uses_double.metal"))
    with pytest.raises(emulate.EmulatorError, match="Metal has no double"):
        mk.quantized_matmul(*_matvec_inputs(), 64, 4)


def test_threadgroup_memory_over_32kb_is_refused():
    k = mx.fast.metal_kernel(name="orchard_test_big_tg", input_names=["x"], output_names=["y"], source="""
        threadgroup float big[9000];
        big[thread_position_in_threadgroup.x] = x[thread_position_in_grid.x];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        y[thread_position_in_grid.x] = static_cast<T>(big[0]);
    """)
    x = mx.zeros((32,))
    call = dict(template=[("T", mx.float32)], grid=(32, 1, 1), threadgroup=(32, 1, 1), output_shapes=[(32,)],
                output_dtypes=[mx.float32])
    msl = emulate.generated_msl(k, [x], **call)
    with pytest.raises(emulate.EmulatorError, match="36000 bytes of threadgroup memory; Metal allows 32768"):
        emulate.run(msl, [x], [(32,)], [mx.float32], (32, 1, 1), (32, 1, 1))


def test_unknown_metal_feature_fails_compilation():
    k = mx.fast.metal_kernel(name="orchard_test_unknown", input_names=["x"], output_names=["y"], source="""
        y[thread_position_in_grid.x] = static_cast<T>(simd_prefix_exclusive_sum(x[thread_position_in_grid.x]));
    """)
    x = mx.zeros((32,))
    msl = emulate.generated_msl(k, [x], template=[("T", mx.float32)], grid=(32, 1, 1), threadgroup=(32, 1, 1),
                                output_shapes=[(32,)], output_dtypes=[mx.float32])
    with pytest.raises(emulate.EmulatorError, match="simd_prefix_exclusive_sum"):
        emulate.run(msl, [x], [(32,)], [mx.float32], (32, 1, 1), (32, 1, 1))


def test_generated_msl_matches_the_golden_files():
    rendered = golden.render()
    on_disk = {p.name for p in GOLDEN.glob("*.metal")}
    assert set(rendered) == on_disk, "regenerate with: python -m metal_kernels.golden tests/kernels/golden"
    for name, text in rendered.items():
        assert (GOLDEN / name).read_text() == text, (
            f"the MSL MLX generates for {name} changed; review it, then regenerate with "
            "python -m metal_kernels.golden tests/kernels/golden")
    # Every instantiation the public functions use is covered: 3 dtypes x 2 bit widths x 3 groups.
    assert rendered["qmv.metal"].count("// ---- instantiation") == 18
    assert rendered["qswiglu.metal"].count("// ---- instantiation") == 36


def test_reading_threadgroup_memory_nobody_wrote_is_caught():
    # Threadgroup memory is poisoned (NaN) before every group, as a GPU leaves it undefined.
    k = mx.fast.metal_kernel(name="orchard_test_unwritten_tg", input_names=["x"], output_names=["y"], source="""
        threadgroup float buf[32];
        const uint t = thread_position_in_threadgroup.x;
        if (t > 0) buf[t] = x[thread_position_in_grid.x];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        y[thread_position_in_grid.x] = static_cast<T>(buf[(t + 1) % 32]);
    """)
    x = mx.zeros((64,))
    call = dict(template=[("T", mx.float32)], grid=(64, 1, 1), threadgroup=(32, 1, 1), output_shapes=[(64,)],
                output_dtypes=[mx.float32])
    msl = emulate.generated_msl(k, [x], **call)
    with pytest.raises(emulate.EmulatorError, match="2 of 64 elements of output 0 were never written or hold NaN"):
        emulate.run(msl, [x], [(64,)], [mx.float32], (64, 1, 1), (32, 1, 1))
