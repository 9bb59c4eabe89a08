"""`orchard convert` on the tiny fixtures: every family converts, loads in Orchard and in mlx-lm, and
the converted model computes what MLX's own quantization of the source computes."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxmodels
from mlxmodels.convert import ConvertOptions, convert
from mlxmodels.export import mlx_lm_weight_names
from conftest import FIXTURES
from helpers import make_tiny_model

ALL_FIXTURES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").is_file())

# Fixtures using a feature mlx-lm 0.32 does not implement (Orchard-side correctness is checked above):
MLX_LM_LACKS_FEATURE = {
    "olmoe": "clip_qkv",  # "olmoe_hf4" has none and is compared
    "qwen2_moe_hf4": "mlp_only_layers",  # a dense layer among MoE layers; "qwen2_moe" is compared
    "falcon_h1_gated": "mamba_d_ssm null",  # its muP vector needs the number (falcon_h1 is compared)
    # mlx-lm's Kimi MLA has only a plain q_proj and no biases (loading reports q_a_proj, q_b_proj,
    # q_a_layernorm and the biases as "not in model"), and its MoE layers are "from
    # first_k_dense_replace on", so no dense layer after a MoE one; "kimi_linear" is compared.
    "kimi_linear_qlora": "q_lora_rank, attention_bias, a dense layer after a MoE layer",
    # mlx-lm's Llama 4 asserts one expert per token, and hard-codes NoPE on every 4th layer and MoE on
    # every `interleave_moe_layer_step`-th (here all: it then reports layer 1's dense MLP weights as
    # "not in model"); "llama4_text" and "llama4_text_hf4" follow those defaults and are compared.
    "llama4_text_pattern": "top-2 routing, no_rope_layers and moe_layers lists",
    # mlx-lm's DeepSeek-V2 MLPs have no biases ("parameters not in model": the mlp_bias tensors);
    # "deepseek_v2" (and _hf4) are compared.
    "deepseek_v2_group": "mlp_bias",
    # mlx-lm's deepseek_v3 drops only model.layers.61 (the real model's MTP block), so this fixture's
    # MTP block (model.layers.2) is "not in model"; and it always rotates interleaved pairs: without the
    # MTP tensors its float logits are 0.83 (11% of the scale) from transformers' reference, what this
    # fixture's rope_interleave ablation moves them by (Orchard: 2e-6). "deepseek_v3" is compared.
    "deepseek_v3_mtp": "rope_interleave false, an MTP block not at layer 61",
}
# mlx-lm 0.32's Mamba-2 reads these directories but does not reproduce transformers on them (its
# logits are ~1 away from transformers' reference at every position, Orchard's 8-bit ones ~0.08):
# for these the test checks that mlx-lm loads the output and that Orchard is the closer of the two.
MLX_LM_DISAGREES_WITH_TRANSFORMERS = {"mamba2", "mamba2_hf4"}
# mlx-lm 0.32's gpt-oss hard-codes the experts' SwiGLU clamp (limit 7, alpha 1.702) where transformers
# reads `swiglu_limit` / `swiglu_alpha` (these fixtures clamp at 1.0: in float32 mlx-lm is 0.47 of the
# logits' scale away from transformers' reference, Orchard 5e-7), and it always truncates YaRN's
# correction range (the releases say `truncate: false`; 1.3e-4 of the scale on these fixtures).
MLX_LM_DISAGREES_WITH_TRANSFORMERS |= {"gpt_oss", "gpt_oss_hf4", "gpt_oss_mxfp4"}
# mlx-lm 0.32's Phi-3 always rotates with LongRoPE's long factors (and ignores `sliding_window`), where
# transformers uses the short ones while the sequence fits in original_max_position_embeddings (24
# tokens of 64 here). In float32 mlx-lm is 0.19 (of a logit scale of 15) from transformers' reference
# inside the window, 3.8e-6 once long_factor is set to short_factor, 3.3 past the window; Orchard
# 5.7e-6. "phi3_longrope" (24 tokens past an original 16: long factors) is compared.
MLX_LM_DISAGREES_WITH_TRANSFORMERS |= {"phi3", "phi3_hf4"}
# mlx-lm 0.32 attends over the whole sequence in these families' sliding-window layers: compared
# only inside the window.
MLX_LM_IGNORES_SLIDING_WINDOW = {"mistral", "gemma2"}
# mlx-lm 0.32's Falcon-H1 folds the muP multipliers into the weights when it loads a PyTorch-layout
# checkpoint, and then disagrees with transformers on the float fixtures (max |logit error| 14% of
# the logits' scale on falcon_h1, 20% on falcon_h1_gated): key_multiplier is never applied, the
# attention input multiplier reaches q and k but not v, biases are not scaled, and its mixer norm
# ignores mamba_n_groups. On a converted (MLX-layout) directory it folds nothing and runs without
# multipliers at all.
MLX_LM_DISAGREES_WITH_TRANSFORMERS |= {"falcon_h1", "falcon_h1_hf4"}


def _jamba_moe_as_transformers(self, x):
    """mlx-lm 0.32's Jamba MoE block with transformers' weights: the top-k softmax probabilities as
    they are, where mlx-lm renormalises them to sum to one. Measured on the float `jamba` fixture:
    mlx-lm's logits are 0.066 (1e-2 of the scale) from transformers' reference, Orchard's 2e-6;
    with this block mlx-lm's are 2e-6 away too, so the renormalisation is the whole difference."""
    probs = mx.softmax(self.router(x).astype(mx.float32), axis=-1)
    k = self.num_experts_per_tok
    indices = mx.argpartition(-probs, kth=k - 1, axis=-1)[..., :k]
    weights = mx.take_along_axis(probs, indices, axis=-1).astype(x.dtype)
    return (self.switch_mlp(x, indices) * weights[..., None]).sum(axis=-2)


def _ids(name: str) -> mx.array:
    return mx.array(np.load(FIXTURES / name / "reference.npz")["input_ids"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each fixture converted once per bit width (float32 scales so MLX's quantize is the reference)."""
    root = tmp_path_factory.mktemp("converted")
    cache = {}

    def get(name: str, bits: int) -> Path:
        if (name, bits) not in cache:
            out = root / f"{name}-{bits}"
            convert(FIXTURES / name, out, ConvertOptions(bits=bits, dtype="float32"))
            cache[(name, bits)] = out
        return cache[(name, bits)]

    return get


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_converted_equals_mlx_quantization_of_source(converted, name, bits):
    """Orchard on OUT == the source model quantized in memory by MLX's own `nn.quantize`.

    Same float32 weights, same `mx.quantize` groups: the only difference allowed is summation
    order, far below 1e-4 on logits of size ~2.
    """
    out = converted(name, bits)
    config = json.loads((out / "config.json").read_text())
    q = config["quantization"]
    assert (q["bits"], q["group_size"]) == (bits, 64)
    weights = mx.load(str(out / "model.safetensors"))
    quantized = {k[: -len(".scales")] for k in weights if k.endswith(".scales")}
    assert any(".layers.0." in m for m in quantized), "the blocks' linear layers must be quantized"

    ours = mlxmodels.load_model(out)(_ids(name))
    reference = mlxmodels.load_model(FIXTURES / name)
    stored_name = mlx_lm_weight_names(config)  # MoE experts are stored under mlx-lm's names
    # Modules the source already stores quantized (gpt-oss's MXFP4 experts) load quantized and are kept.
    nn.quantize(reference, group_size=64, bits=bits,
                class_predicate=lambda p, m: stored_name(p) in quantized and hasattr(m, "to_quantized"))
    expected = reference(_ids(name))
    np.testing.assert_allclose(np.array(ours), np.array(expected), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("name", [n for n in ALL_FIXTURES if n not in MLX_LM_LACKS_FEATURE])
def test_mlx_lm_reads_converted_model(converted, name, bits, monkeypatch):
    """mlx-lm's `load` on OUT gives Orchard's logits and greedy tokens.

    Known mlx-lm 0.32 gaps, compensated explicitly: its Gemma 3 has no final-logit soft-capping
    (applied here to its logits), its Mistral and Gemma 2 ignore `sliding_window` (compared only
    inside the window), and its Jamba renormalises the router's top-k weights (its MoE block replaced by
    `_jamba_moe_as_transformers`). Both run float32 on the CPU from the same dequantized weights: atol 1e-4.
    """
    from mlx_lm import load as mlx_lm_load
    from mlx_lm.models import jamba as mlx_lm_jamba

    monkeypatch.setattr(mlx_lm_jamba.JambaSparseMoeBlock, "__call__", _jamba_moe_as_transformers)

    out = converted(name, bits)
    config = json.loads((out / "config.json").read_text())
    assert "rope_parameters" not in config  # mlx-lm reads the top-level dialect only
    ids = _ids(name)
    ours = mlxmodels.load_model(out)(ids).astype(mx.float32)
    theirs_model, _ = mlx_lm_load(str(out))
    theirs_model.set_dtype(mx.float32)
    theirs = theirs_model(ids).astype(mx.float32)
    if name in MLX_LM_DISAGREES_WITH_TRANSFORMERS:
        reference = np.load(FIXTURES / name / "reference.npz")["logits"]
        ours_error = np.abs(np.array(ours) - reference).max()
        assert ours_error < np.abs(np.array(theirs) - reference).max()
        assert ours_error < 0.1 * (4 if bits == 4 else 1) * np.abs(reference).max()
        return
    cap = config.get("final_logit_softcapping")
    if cap and config["model_type"].startswith("gemma3"):
        theirs = mx.tanh(theirs / cap) * cap
    if config["model_type"] in MLX_LM_IGNORES_SLIDING_WINDOW and config.get("sliding_window"):
        window = config["sliding_window"]
        ours, theirs = ours[:, :window], theirs[:, :window]
    np.testing.assert_allclose(np.array(ours), np.array(theirs), atol=1e-4, rtol=1e-4)
    assert np.array_equal(np.array(ours.argmax(-1)), np.array(theirs.argmax(-1)))


def test_bits_per_weight_realistic_shapes(tmp_path):
    """4-bit, group 64 on Llama-shaped matrices: 4 + 2 x 16 / 64 = 4.5 bits for quantized weights;
    norms (float16) add a little. Embeddings and LM head are quantized and included."""
    config = {
        "model_type": "llama", "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 4096,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    }
    src = make_tiny_model(tmp_path / "src", config)
    result = convert(src, tmp_path / "out", ConvertOptions())
    assert 4.5 <= result.bits_per_weight <= 4.6, result.bits_per_weight
    assert result.quantized_parameters / result.parameters > 0.99
    quant = json.loads((tmp_path / "out" / "config.json").read_text())["quantization"]
    assert {"group_size": 64, "bits": 4}.items() <= quant.items()


def test_mixed_recipe_layout_and_loaders_agree(tmp_path):
    """The mixed recipe writes mlx-lm's per-layer entries; both loaders read them the same way."""
    from mlx_lm import load as mlx_lm_load

    name = "qwen2-v5"
    out = tmp_path / "mixed"
    convert(FIXTURES / name, out, ConvertOptions(bits=4, recipe="mixed", dtype="float32"))
    q = json.loads((out / "config.json").read_text())["quantization"]
    layers = json.loads((FIXTURES / name / "config.json").read_text())["num_hidden_layers"]
    assert q["model.embed_tokens"]["bits"] == 6
    assert q[f"model.layers.{layers - 1}.mlp.down_proj"]["bits"] == 6
    assert q["model.layers.0.self_attn.v_proj"]["bits"] == 6
    assert "model.layers.0.self_attn.q_proj" not in q  # default bits
    weights = mx.load(str(out / "model.safetensors"))
    # 6-bit packing: 64 inputs -> 64 * 6 / 32 = 12 words
    assert weights["model.layers.0.self_attn.v_proj.weight"].shape[-1] == 12
    ours = mlxmodels.load_model(out)(_ids(name))
    theirs_model, _ = mlx_lm_load(str(out))
    theirs_model.set_dtype(mx.float32)
    np.testing.assert_allclose(np.array(ours), np.array(theirs_model(_ids(name))), atol=1e-4, rtol=1e-4)


def test_dequantize_round_trip(converted, tmp_path):
    """--dequantize writes float weights equal to MLX's dequantization of the 4-bit model."""
    q4 = converted("llama3-v5", 4)
    out = tmp_path / "float"
    convert(q4, out, ConvertOptions(dequantize=True, dtype="float32"))
    weights = mx.load(str(out / "model.safetensors"))
    assert not any(k.endswith(".scales") for k in weights)
    assert "quantization" not in json.loads((out / "config.json").read_text())
    a = mlxmodels.load_model(q4)(_ids("llama3-v5"))
    b = mlxmodels.load_model(out)(_ids("llama3-v5"))
    np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-4, rtol=1e-4)


def test_shards_with_index(tmp_path):
    """A small shard limit gives several shards, an index, and the same model in both loaders."""
    from mlx_lm import load as mlx_lm_load

    name = "llama3-v5"
    out = tmp_path / "sharded"
    result = convert(FIXTURES / name, out, ConvertOptions(dtype="float32", max_shard_bytes=40_000))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert result.shards == len(files) > 1
    assert all((out / f).is_file() for f in files)
    assert not list(out.glob("part-*"))
    ours = mlxmodels.load_model(out)(_ids(name))
    theirs_model, _ = mlx_lm_load(str(out))
    theirs_model.set_dtype(mx.float32)
    np.testing.assert_allclose(np.array(ours), np.array(theirs_model(_ids(name))), atol=1e-4, rtol=1e-4)


def test_quality_measures_against_numpy():
    """Perplexity and KL as computed by quality.py, checked with plain numpy on transformers' logits."""
    from mlxmodels.quality import mean_kl, perplexity

    ref = np.load(FIXTURES / "llama3-v5" / "reference.npz")
    ids, logits = ref["input_ids"][0].tolist(), ref["logits"][0].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    expected_ppl = np.exp(-np.mean([logp[i, ids[i + 1]] for i in range(len(ids) - 1)]))
    ours = mx.array(logp.astype(np.float32))
    assert abs(perplexity(ours, ids) - expected_ppl) < 1e-4 * expected_ppl
    other = logp[::-1].copy()
    expected_kl = np.mean((np.exp(logp) * (logp - other)).sum(-1))
    assert abs(mean_kl(ours, mx.array(other.astype(np.float32))) - expected_kl) < 1e-4
    assert mean_kl(ours, ours) == 0.0


def test_cli_summary_and_convert_and_run(tmp_path, capsys):
    """The summary shows size, bits, memory and the quality cost; --run answers like `orchard run`."""
    import re

    from app.main import main

    out = tmp_path / "out"
    argv = ["convert", str(FIXTURES / "llama3-v5"), "-o", str(out), "--run", "Hello there", "--max-tokens", "6"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    for text in ("bits per weight: ", "size: ", "peak memory: MLX ", "parameters: "):
        assert text in captured.out
    m = re.search(r"perplexity ([\d.]+) \(source\) -> ([\d.]+) \(converted\), mean KL ([\d.]+)", captured.out)
    assert m and float(m.group(1)) > 1 and float(m.group(2)) > 1 and float(m.group(3)) > 0
    assert "converting: 100%" in captured.err  # progress (non-terminal form)
    answer = captured.out.strip().splitlines()[-1]
    assert main(["run", "--model", str(out), "-p", "Hello there", "--temp", "0", "--max-tokens", "6", "-q"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == answer
