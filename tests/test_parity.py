"""Parity with Hugging Face transformers on tiny random-weight models (tests/fixtures/models).

Each fixture holds a checkpoint written by transformers and the logits transformers computed for a
token sequence (24 tokens; longer for linear-attention families, so that a prefill crosses a chunk of
their scan; see tests/fixtures/fixture_lib.py). We compare:
- the full sequence in one forward pass;
- cache-driven decoding: one token at a time, and a chunked prefill followed by single steps —
  which exercises the growing KV cache and, for sliding-window layers, the rotating cache well past
  its window.

Tolerance: max |ours - theirs| <= 1e-4 x max |theirs|. Both sides compute in float32; what differs
is only the order of floating-point operations (fused kernels vs. eager PyTorch), whose error over
a few layers is ~1e-6 relative, so 1e-4 leaves room for that and nothing else: a wrong RoPE
frequency, mask or norm shifts logits by far more than 1e-2 relative.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES, fixture_names

import mlxmodels

RELATIVE_TOLERANCE = 1e-4


def reference(name):
    data = np.load(FIXTURES / name / "reference.npz")
    return data["input_ids"], data["logits"]


def assert_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    scale = np.abs(theirs).max()
    error = np.abs(ours - theirs).max()
    assert error <= RELATIVE_TOLERANCE * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


@pytest.fixture(autouse=True, params=["cpu-math", "mlx-ops"])
def math_path(request, monkeypatch):
    """Both ways the CPU computes attention, activations and RoPE: Orchard's multiply-add versions
    (cpu_math, the CPU default) and MLX's own ops (what Metal and CUDA run)."""
    if request.param == "mlx-ops":
        monkeypatch.setenv("ORCHARD_CPU_MATH", "mlx")


@pytest.fixture(scope="module", params=fixture_names())
def fixture(request):
    name = request.param
    model = mlxmodels.load_model(FIXTURES / name)
    ids, logits = reference(name)
    return name, model, ids, logits


def test_full_sequence_logits(fixture):
    name, model, ids, expected = fixture
    got = np.array(model(mx.array(ids)))
    assert_close(got, expected, f"{name} full sequence")


# How a sequence of L tokens is fed through the cache. Linear-attention fixtures are longer than a
# chunk of their scan (64), so "two-chunks" carries a state into a prefill that crosses a boundary.
CHUNKINGS = {
    "token-by-token": lambda L: [1] * L,
    "mixed": lambda L: [5, 1, 7, 1, L - 14],
    "two-chunks": lambda L: [11, L - 11],
    "prefill-then-decode": lambda L: [L - 3, 1, 1, 1],
}


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_cached_decoding(fixture, chunking):
    name, model, ids, expected = fixture
    chunks = CHUNKINGS[chunking](ids.shape[1])
    if model.info.config.get("rope_parameters", {}).get("rope_type") == "dynamic":
        pytest.skip(
            "dynamic NTK RoPE rescales with the length seen so far: incremental and full-sequence "
            "logits legitimately differ (transformers' own cached decoding differs the same way)"
        )
    cache = mlxmodels.make_cache(model)
    outputs, start = [], 0
    for size in chunks:
        outputs.append(np.array(model(mx.array(ids[:, start : start + size]), cache=cache)))
        start += size
    got = np.concatenate(outputs, axis=1)
    assert_close(got, cached_reference(name, chunking, chunks, expected), f"{name} cached {chunks}")


def cached_reference(name: str, chunking: str, chunks: list, full: np.ndarray) -> np.ndarray:
    """The full pass's logits, or transformers' own cached decoding where the fixture stores it
    (`reference_cached.npz`): LongRoPE picks its factors by the length seen so far, so keys cached
    before a sequence outgrows the original context keep their short-factor rotation."""
    path = FIXTURES / name / "reference_cached.npz"
    if not path.is_file():
        return full
    stored = np.load(path)
    assert stored[f"{chunking}.sizes"].tolist() == chunks, f"{path} was made for other chunkings: regenerate it"
    return stored[chunking]


def test_fixture_set_covers_the_promised_families():
    types = {json.loads((FIXTURES / n / "config.json").read_text())["model_type"] for n in fixture_names()}
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma3_text"} <= types
