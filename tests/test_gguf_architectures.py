"""GGUF architectures (mlxmodels/gguf_arch.py) against transformers.

tests/fixtures/gguf/<fixture>.<f32|q8_0>.gguf are parity fixtures converted by llama.cpp's own
converter (tests/fixtures/make_gguf_fixtures.py): its tensor names, metadata keys, Q/K permutation,
Gemma norm offsets, stacked experts, LongRoPE factor tensors and Llama 3.1 `rope_freqs`. Orchard reads
them back into Hugging Face configs and weights, and must compute the fixture's transformers logits
(reference.npz): an independent reference, at the parity tests' tolerance for float32 files.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES

import mlxmodels
from app.main import main
from mlxmodels.gguf import GGUFSource
from mlxmodels.models import family_module

GGUF_FIXTURES = Path(__file__).parent / "fixtures" / "gguf"
SOURCES = {"llama3-v5": "llama", "qwen2-v5": "qwen2", "qwen3-mqa": "qwen3", "qwen3_moe": "qwen3moe",
           "gemma2_gguf": "gemma2", "phi3": "phi3"}
# As tests/test_parity.py: both sides compute in float32, only the order of operations differs.
FLOAT_TOLERANCE = 1e-4
# Q8_0 rounds each weight to 1/254 of its block's largest: measured 0.5-2.6% of the logits' scale on
# these random tiny models (qwen3_moe the most: its router sees the rounded activations); a mapping
# error (a missing norm offset, a wrong RoPE, swapped experts) moves them by tens of percent.
Q8_TOLERANCE = 5e-2


def reference(name: str):
    data = np.load(FIXTURES / name / "reference.npz")
    return data["input_ids"], data["logits"]


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("name", list(SOURCES))
def test_float_gguf_matches_transformers(name):
    path = GGUF_FIXTURES / f"{name}.f32.gguf"
    assert GGUFSource(path).arch == SOURCES[name]
    model = mlxmodels.load_model(path)
    ids, expected = reference(name)
    assert relative_error(np.array(model(mx.array(ids))), expected) <= FLOAT_TOLERANCE
    # Cached decoding (sliding windows, the rotating cache) from the same config.
    cache, split = mlxmodels.make_cache(model), ids.shape[1] - 3
    parts = [model(mx.array(ids[:, :split]), cache=cache)]
    parts += [model(mx.array(ids[:, i : i + 1]), cache=cache) for i in range(split, ids.shape[1])]
    assert relative_error(np.concatenate([np.array(p) for p in parts], axis=1), expected) <= FLOAT_TOLERANCE


@pytest.mark.parametrize("name", list(SOURCES))
def test_q8_0_gguf_matches_transformers(name):
    path = GGUF_FIXTURES / f"{name}.q8_0.gguf"
    assert "Q8_0" in GGUFSource(path).tensor_types()
    model = mlxmodels.load_model(path, cpu_weights="mlx")  # MLX's own quantized kernels
    ids, expected = reference(name)
    assert relative_error(np.array(model(mx.array(ids))), expected) <= Q8_TOLERANCE


@pytest.mark.parametrize("name", list(SOURCES))
def test_q8_0_gguf_converts_to_a_model_directory(name, tmp_path):
    """`orchard convert` keeps the file's Q8_0 blocks (8 bits asked) under the family's names; the
    directory loads and still gives transformers' logits."""
    out = tmp_path / name
    assert main(["convert", str(GGUF_FIXTURES / f"{name}.q8_0.gguf"), "-o", str(out), "--bits", "8", "--no-eval"]) == 0
    config = json.loads((out / "config.json").read_text())
    hf_config = json.loads((FIXTURES / name / "config.json").read_text())
    assert config["model_type"] == hf_config["model_type"] and config["quantization"]["bits"] == 8
    ids, expected = reference(name)
    model = mlxmodels.load_model(out, cpu_weights="mlx")
    assert relative_error(np.array(model(mx.array(ids))), expected) <= Q8_TOLERANCE


def _close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        # GGUF stores float metadata and factor lists as float32 (1e-6 is 9.99999997e-07 there).
        return b is not None and a is not None and abs(a - b) <= 1e-6 * max(abs(a), abs(b))
    return a == b


@pytest.mark.parametrize("name", list(SOURCES))
def test_config_maps_to_the_fixtures(name):
    """The family's arguments built from the GGUF metadata equal those built from the fixture's own
    config.json: head counts, head_dim, norm epsilon, RoPE (theta, scaling, partial rotary), windows
    and layer pattern, soft-caps, query scale, expert counts and routing."""
    gguf_config = GGUFSource(GGUF_FIXTURES / f"{name}.f32.gguf").config
    hf_config = json.loads((FIXTURES / name / "config.json").read_text())
    assert gguf_config["model_type"] == hf_config["model_type"]
    family = family_module(hf_config)
    ours, theirs = vars(family.ModelArgs.from_config(gguf_config)), vars(family.ModelArgs.from_config(hf_config))
    if "rope" in ours and ours["rope"].get("rope_type") == "longrope":
        # llama.cpp stores LongRoPE's attention factor, which transformers derives from the lengths.
        import math

        factor = theirs["max_position_embeddings"] / theirs["rope"]["original_max_position_embeddings"]
        derived = math.sqrt(1 + math.log(factor) / math.log(theirs["rope"]["original_max_position_embeddings"]))
        assert abs(ours["rope"].pop("attention_factor") - derived) < 1e-6
    differing = {k: (ours[k], theirs.get(k)) for k in ours if not _close(ours[k], theirs.get(k))}
    assert not differing


def test_moe_config_counts():
    config = GGUFSource(GGUF_FIXTURES / "qwen3_moe.f32.gguf").config
    assert (config["num_experts"], config["num_experts_per_tok"], config["moe_intermediate_size"]) == (4, 2, 64)
    assert config["norm_topk_prob"] is True and config["intermediate_size"] == 96


def test_unsupported_architecture_is_one_line(tmp_path, capsys):
    from gguf import GGUFWriter

    path = tmp_path / "falcon.gguf"
    writer = GGUFWriter(str(path), "falcon")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert main(["run", "--model", str(path), "-p", "hi"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"orchard: error: {path}: unsupported GGUF architecture 'falcon' "
                   "(supported: llama, qwen2, qwen3, qwen3moe, gemma2, gemma3, phi3)"]


def test_llama3_gguf_converts_to_llama3_scaling_for_both_loaders(tmp_path):
    """llama.cpp stores Llama 3.1's RoPE scaling as a `rope_freqs` tensor of per-pair divisors; the
    converted directory carries the llama3 parameters they came from, which mlx-lm reads too: both
    loaders give transformers' logits."""
    import mlx_lm

    from mlxmodels.convert import ConvertOptions, convert

    out = tmp_path / "llama3"
    convert(GGUF_FIXTURES / "llama3-v5.f32.gguf", out, ConvertOptions(dequantize=True, dtype="float32"))
    config = json.loads((out / "config.json").read_text())
    hf = json.loads((FIXTURES / "llama3-v5" / "config.json").read_text())["rope_parameters"]
    scaling = {k: v for k, v in config["rope_scaling"].items() if k != "type"}
    assert _close(scaling, {k: v for k, v in hf.items() if k != "rope_theta"})
    ids, expected = reference("llama3-v5")
    ours = np.array(mlxmodels.load_model(out)(mx.array(ids)))
    theirs, _ = mlx_lm.utils.load_model(out)
    theirs = np.array(theirs(mx.array(ids)))
    assert relative_error(ours, expected) <= FLOAT_TOLERANCE
    assert relative_error(theirs, expected) <= FLOAT_TOLERANCE


@pytest.mark.parametrize("name", [n for n in SOURCES if n != "phi3"])
def test_converted_gguf_loads_in_mlx_lm(name, tmp_path):
    """The converted directory's config is one mlx-lm 0.32 reads to transformers' logits, over the first
    8 positions: its Gemma 2 attends over the whole sequence in sliding-window layers (window 8 here),
    and its Phi-3 always rotates with LongRoPE's long factors (1.3e-2 off here; tests/test_convert.py
    documents both gaps)."""
    import mlx_lm

    from mlxmodels.convert import ConvertOptions, convert

    out = tmp_path / name
    convert(GGUF_FIXTURES / f"{name}.f32.gguf", out, ConvertOptions(dequantize=True, dtype="float32"))
    ids, expected = reference(name)
    theirs, _ = mlx_lm.utils.load_model(out)
    assert relative_error(np.array(theirs(mx.array(ids[:, :8]))), expected[:, :8]) <= FLOAT_TOLERANCE


@pytest.mark.parametrize("factor, head_dim", [(8.0, 128), (32.0, 64)])
def test_llama3_scaling_recovered_from_llama_3_x_factors(factor, head_dim):
    """Llama 3.1 (factor 8) and 3.2 (factor 32) as llama.cpp's converter writes them: the parameters
    come back exactly (low_freq_factor 1 fixes the one free scale of the formula)."""
    from mlxmodels.gguf_arch import llama3_factors, llama3_scaling

    params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    factors = llama3_factors(params, 500000.0, head_dim).astype(np.float32)
    assert llama3_scaling(factors, 500000.0, head_dim) == params


def test_other_frequency_factors_are_kept():
    from mlxmodels.gguf_arch import llama3_scaling

    factors = np.array([1.0, 3.0, 2.0, 8.0, 8.0, 8.0, 8.0, 8.0], dtype=np.float32)  # not monotone: no llama3
    assert llama3_scaling(factors, 10000.0, 16) == {"rope_type": "frequency_factors", "factors": factors.tolist()}


@pytest.mark.parametrize("pre, pieces", [("qwen2", ["1", "2", "3", "4"]), ("llama-bpe", ["123", "4"])])
def test_qwen2_vocabularies_split_digits_one_by_one(pre, pieces):
    """Qwen 2/3 GGUFs (`tokenizer.ggml.pre` "qwen2") pre-tokenize as Llama 3 but one digit at a time
    (llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2): with merges that could join "123", Qwen keeps digits
    apart where Llama 3 joins up to three. (On llama.cpp's own test vocabulary ggml-vocab-qwen2.gguf,
    not committed for its 6 MB, Orchard's tokens equal llama.cpp's expected ones for all 47 inputs.)"""
    from mlxmodels.tokenizer import gguf_hf_tokenizer

    tokens = [chr(c) for c in range(ord("!"), ord("~") + 1)] + ["12", "123"]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.merges": ["1 2", "12 3"], "tokenizer.ggml.add_bos_token": False}
    ids = gguf_hf_tokenizer(meta, Path("x.gguf")).encode("1234", add_special_tokens=False)
    assert [tokens[i] for i in ids] == pieces
