"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI) against mlx-lm.

mlx-lm loads the same converted directory; both run in float32 on the CPU (Orchard's dtype policy;
mlx-lm is cast to match) and must produce the same greedy text. The GGUF loaded directly must give
the same logits as its converted directory.
"""

import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

import mlxmodels
from mlxmodels.prompt import format_messages

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about apples.",
    "List three colours.",
]


@pytest.fixture(scope="module")
def mlx_lm_model(default_model_dir):
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(default_model_dir))
    model.set_dtype(mx.float32)
    return model, tokenizer


def test_greedy_text_equals_mlx_lm(default_model, mlx_lm_model):
    from mlx_lm.generate import generate as mlx_lm_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = default_model
    reference_model, reference_tokenizer = mlx_lm_model
    for question in PROMPTS:
        prompt = format_messages(tokenizer, [{"role": "user", "content": question}])
        expected = mlx_lm_generate(
            reference_model, reference_tokenizer, prompt, max_tokens=20, sampler=make_sampler(0.0)
        )
        got, stats = mlxmodels.generate(model, tokenizer, prompt, max_tokens=20)
        assert got == expected, question
        assert stats.generation_tokens > 0


def test_gguf_loaded_directly_matches_converted_directory(default_model, default_gguf_path):
    direct = mlxmodels.load_model(default_gguf_path)
    model, tokenizer = default_model
    ids = mx.array([tokenizer.encode("The quick brown fox jumps over the lazy dog")])
    np.testing.assert_array_equal(np.array(direct(ids)), np.array(model(ids)))


def test_default_model_metadata(default_model_dir, default_model):
    model, tokenizer = default_model
    assert model.info.model_type == "llama"
    assert model.info.quantization["bits"] == 4
    assert model.info.quantization["model.embed_tokens"]["bits"] == 8  # Q8_0 embedding in the GGUF
    assert model.info.compute_dtype == "float32"  # CPU policy
    assert model.info.context_length == 8192
    assert tokenizer.has_chat_template
    # SmolLM's vocabulary splits digits one by one (the GGUF's "smollm" pre-tokenizer).
    digits = tokenizer.encode("2024", add_special_tokens=False)
    assert len(digits) == 4


def test_orchard_run_answers_paris(default_model_dir):
    result = subprocess.run(
        [sys.executable, "-m", "app.main", "run", "--prompt", "What is the capital of France?", "--temp", "0"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "tok/s" in result.stderr and "tok/s" not in result.stdout  # stats go to stderr only
