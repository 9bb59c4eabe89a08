"""The CPU backend's fast paths against MLX's plain path, and the BLAS selection logic."""

from __future__ import annotations

import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import pytest
from helpers import cpu_math_mode

import mlxmodels
from mlxmodels import blas
from metal_kernels.quantized import DEQUANT_MIN_ROWS
from mlxmodels.cpu_weights import DispatchedQuantizedLinear, apply_cpu_weight_policy


@pytest.fixture(scope="module")
def plain_answer(default_model_dir):
    """Greedy answer through MLX's own quantized kernels and ops (no fp32 copies, no CPU math):
    the reference for the fast paths."""
    reference, tokenizer = mlxmodels.load(default_model_dir, cpu_weights="mlx")
    assert reference.info.cpu_weights == "native"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name the largest planet."}], tokenize=False, add_generation_prompt=True
    )
    with cpu_math_mode("mlx"):
        return prompt, mlxmodels.generate(reference, tokenizer, prompt, max_tokens=16)[0]


@pytest.mark.parametrize("policy", ["fp32", "quantized"])
def test_fast_paths_keep_greedy_tokens_of_the_plain_path(default_model_dir, plain_answer, policy):
    model, tokenizer = mlxmodels.load(default_model_dir, cpu_weights=policy)
    assert model.info.cpu_weights == policy
    prompt, plain = plain_answer
    ours, _ = mlxmodels.generate(model, tokenizer, prompt, max_tokens=16)
    assert ours == plain


def test_fast_path_logits_within_fp32_tolerance(monkeypatch):
    """Dequantize-then-GEMM computes the same sums as the quantized kernel, in another order."""
    monkeypatch.setenv("ORCHARD_KERNELS", "builtin")  # 5 rows would go to the native op (tests/test_cpu_qmm.py)
    mx.random.seed(0)
    layer = nn.QuantizedLinear(256, 96, bias=True, group_size=64, bits=4)
    x = mx.random.normal((5, 256))
    expected = layer(x)
    layer.__class__ = DispatchedQuantizedLinear
    got = layer(x)
    assert x.shape[0] >= DEQUANT_MIN_ROWS
    # fp32 sums of 256 products of O(1) terms: reordering error ~1e-6 relative to the output scale.
    scale = float(mx.abs(expected).max())
    assert float(mx.abs(got - expected).max()) <= 1e-5 * scale


def test_policy_fp32_replaces_every_quantized_layer(default_model_dir):
    model = mlxmodels.load_model(default_model_dir, cpu_weights="mlx")
    policy, extra = apply_cpu_weight_policy(model, "fp32")
    assert policy == "fp32" and extra > 100e6  # 135M parameters in fp32 (~0.5 GB)
    assert not [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert "lm_head" in model and not model.tie_embeddings


def test_unknown_policy_is_a_one_line_error(default_model_dir):
    with pytest.raises(mlxmodels.OrchardError, match="--cpu-weights"):
        mlxmodels.load_model(default_model_dir, cpu_weights="fastest")


def fake_modules(imported: bool) -> dict:
    return {"mlx.core": object()} if imported else {}


def test_blas_none_keeps_mlx_builtin():
    choice = blas._select({"ORCHARD_BLAS": "none"}, "linux", fake_modules(False))
    assert choice.path is None and "ORCHARD_BLAS=none" in choice.describe()


def test_blas_missing_library_is_reported(tmp_path):
    missing = str(tmp_path / "libnothing.so")
    choice = blas._select({"ORCHARD_BLAS": missing}, "linux", fake_modules(False))
    assert choice.path is None and "cannot load" in choice.note and missing in choice.note


def test_blas_library_without_cblas_is_refused():
    import ctypes.util

    libm = ctypes.util.find_library("m")  # a real shared library with no cblas_sgemm
    choice = blas._select({"ORCHARD_BLAS": libm}, "linux", fake_modules(False))
    assert choice.path is None and "does not export cblas_sgemm" in choice.note


def test_blas_already_imported_mlx_is_explained():
    choice = blas._select({}, "linux", fake_modules(True))
    assert choice.path is None and "imported before Orchard" in choice.note


def test_blas_selection_skipped_off_linux():
    choice = blas._select({"ORCHARD_BLAS": "/x.so"}, "darwin", fake_modules(False))
    assert choice.path is None and "Accelerate" in choice.name


def test_cli_reports_the_blas_in_use():
    out = subprocess.run([sys.executable, "-m", "app.main", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "BLAS:" in out.stdout


def test_gpu_backends_keep_their_quantized_kernels(default_model_dir, monkeypatch):
    import mlxmodels.cpu_weights as cpu_weights

    model = mlxmodels.load_model(default_model_dir, cpu_weights="mlx")
    monkeypatch.setattr(cpu_weights, "backend_name", lambda: "metal")
    assert apply_cpu_weight_policy(model, "fp32") == ("native", 0)
    assert [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
