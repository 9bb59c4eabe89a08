"""`orchard bench` for real: the default model end to end through the CLI, and a side-by-side run
with mlx-lm on a tiny synthetic model. Every figure must be present and positive; no thresholds."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from app.main import main
from mlxmodels.profiling import report, store, synthetic

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, rms_norm_eps=1e-5, rope_theta=10000.0,
            max_position_embeddings=512, tie_word_embeddings=True)


def _positive(stat):
    return stat is not None and all(stat[k] > 0 for k in ("mean", "min", "max")) and stat["std"] >= 0


def test_default_model_run(default_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path))
    assert main(["bench", "-p", "16", "-g", "8", "-r", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)

    m = doc["machine"]
    assert m["chip"] and m["cpu_cores"] > 0 and m["memory_gb"] > 0 and m["backend"]
    assert m["bandwidth_gbps"] > 0 and m["bandwidth_source"]
    assert doc["engine"]["mlx"] == mx.__version__ and doc["engine"]["name"] == "orchard"
    model = doc["model"]
    assert model["quantization"]["bits"] == 4 and model["quantization"]["bits_per_weight"] > 4
    assert model["load_time_s"] > 0 and model["weight_bytes_per_token"] > 0
    # SmolLM2-135M: about 135M parameters, counted from the loaded tensors.
    assert 120e6 < model["parameters"] < 150e6

    pp, tg = doc["results"]
    assert (pp["test"], pp["n_prompt"], pp["n_gen"], pp["depth"]) == ("pp16", 16, 0, 0)
    assert (tg["test"], tg["n_prompt"], tg["n_gen"], tg["depth"]) == ("tg8", 0, 8, 0)
    for row in (pp, tg):
        assert _positive(row["ttft_ms"]) and row["peak_memory_gb"] > 0 and row["peak_rss_gb"] > 0
        assert len(row["samples"]) == 2
    assert _positive(pp["prefill_tps"]) and _positive(pp["ttft_cached_ms"]) and pp["decode_tps"] is None
    assert _positive(tg["decode_tps"]) and tg["prefill_tps"] is None
    roof = tg["roofline"]
    assert roof["bytes_per_token"] > model["weight_bytes_per_token"]  # + the KV cache read
    assert roof["achieved_gbps"] > 0 and roof["percent_of_bandwidth"] > 0

    # The same run was appended to the store, and renders in every format.
    (stored,) = store.read_records(tmp_path / "bench" / "results.jsonl")
    assert stored == doc
    assert "| tg8 | orchard |" in report.markdown(doc)
    assert len(report.to_csv(doc).splitlines()) == 3


@pytest.fixture()
def tiny_preset(monkeypatch):
    monkeypatch.setitem(synthetic.PRESETS, "tiny", TINY)


def test_synthetic_weights_mean_the_same_model_in_mlx_lm(tiny_preset):
    """The comparison is only fair if mlx-lm runs the very same network: same logits from both."""
    from mlxmodels.profiling.engines import MlxLmEngine

    ours, weights, config = synthetic.build_synthetic("tiny", bits=4, group_size=32)
    theirs = MlxLmEngine.from_weights(config, weights, as_float32=True).model
    tokens = mx.array([[3, 17, 42, 99, 5, 200]])
    a, b = np.array(ours(tokens)), np.array(theirs(tokens))
    # Both compute in fp32 from the same 4-bit values (Orchard from a dequantized copy, mlx-lm with
    # quantized_matmul); only summation order differs: ~1e-6 relative on logits of size ~1.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # With MLX's own quantized layers on both sides, both read the same bytes per token (the tied
    # embedding is the LM head, read whole, in both).
    from mlxmodels.profiling.roofline import weight_bytes_per_token

    native, _, _ = synthetic.build_synthetic("tiny", bits=4, group_size=32, cpu_weights="mlx")
    assert weight_bytes_per_token(native) == weight_bytes_per_token(theirs, config)


def test_compare_mlx_lm_synthetic(tiny_preset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path))
    assert main(["bench", "--synthetic", "tiny", "--bits", "4", "--group-size", "32", "--compare", "mlx-lm",
                 "-p", "16", "-g", "4", "-d", "0,8", "-r", "2", "--json", "--no-store"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "bench" / "results.jsonl").exists()
    assert doc["model"]["name"] == "synthetic:tiny" and doc["settings"]["prompt"] == "synthetic random ids"
    [base] = doc["baselines"]
    assert base["engine"]["name"] == "mlx-lm" and "float32" in base["engine"]["label"]
    assert [r["test"] for r in doc["results"]] == [r["test"] for r in base["results"]] == \
        ["pp16", "tg4", "pp16 @ d8", "tg4 @ d8"]
    for ours, theirs in zip(doc["results"], base["results"]):
        for figure in ("ttft_ms", "prefill_tps", "decode_tps"):
            if ours[figure] is None:
                assert theirs[figure] is None and ours["ratios"]["mlx-lm"][figure] is None
            else:
                assert ours["ratios"]["mlx-lm"][figure] == pytest.approx(ours[figure]["mean"] / theirs[figure]["mean"])
    # A deeper context means more KV bytes read per decoded token.
    assert doc["results"][3]["roofline"]["bytes_per_token"] > doc["results"][1]["roofline"]["bytes_per_token"]
    text = report.markdown(doc)
    assert "| tg4 @ d8 | mlx-lm |" in text and "**orchard / mlx-lm**" in text


def test_batched_decode(tiny_preset, tmp_path, monkeypatch):
    from mlxmodels.profiling import benchmark, make_tests

    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path))
    doc = benchmark(make_tests([8], [4], [0]), 1, synthetic="tiny", bits=4, group_size=32, batch=3)
    pp, tg = doc["results"]
    assert pp["batch"] == tg["batch"] == doc["settings"]["batch"] == 3
    assert pp["prefill_tps"]["mean"] > 0 and tg["decode_tps"]["mean"] > 0
    # A step reads the weights once for all 3 rows: per token that is a third of them, plus each
    # row's own KV cache (2 layers x 2 KV heads x 16 dims x fp32 x K and V) at the mean position the
    # decode steps read: 2 when the timed steps start (the first step and the queued next one),
    # 6 at the end (1 + 4 + the queued one), so 4.
    kv_row = 2 * 2 * 2 * 16 * 4 * 4
    model_bytes = doc["model"]["weight_bytes_per_token"]
    assert tg["roofline"]["bytes_per_token"] == pytest.approx(model_bytes / 3 + kv_row, abs=1)


@pytest.mark.parametrize("flag", ["--csv", "--jsonl", "--markdown"])
def test_cli_output_formats(flag, tiny_preset, tmp_path, monkeypatch, capsys):
    import csv
    import io

    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path))
    args = ["bench", "--synthetic", "tiny", "-p", "4", "-g", "2", "-r", "1", "--pg", "4,2"]
    assert main(args + ([] if flag == "--markdown" else [flag])) == 0
    out = capsys.readouterr().out
    (stored,) = store.read_records(tmp_path / "bench" / "results.jsonl")
    if flag == "--csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [r["test"] for r in rows] == ["pp4", "tg2", "pp4+tg2"]
        assert float(rows[2]["decode_tps_mean"]) == pytest.approx(stored["results"][2]["decode_tps"]["mean"])
    elif flag == "--jsonl":
        assert len(out.strip().splitlines()) == 1 and json.loads(out) == stored
    else:
        assert out.startswith("**machine**") and "| pp4+tg2 | orchard |" in out


@pytest.mark.skipif(not __import__("importlib.util").util.find_spec("llama_cpp"),
                    reason="llama-cpp-python is not installed (pip install 'orchard[compare]')")
def test_compare_three_engines_on_the_default_model(default_model_dir, tmp_path, monkeypatch, capsys):
    """Orchard, mlx-lm and llama.cpp interleaved on the default model (llama.cpp on its GGUF)."""
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path))
    assert main(["bench", "--compare", "mlx-lm,llama.cpp", "-p", "16", "-g", "4", "-r", "1", "--json",
                 "--no-store"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [b["engine"]["name"] for b in doc["baselines"]] == ["mlx-lm", "llama.cpp"]
    assert doc["baselines"][1]["model"]["name"].endswith(".gguf")
    for b in doc["baselines"]:
        pp, tg = b["results"]
        assert _positive(pp["ttft_ms"]) and _positive(pp["prefill_tps"]) and _positive(tg["decode_tps"])
    for row in doc["results"]:
        assert set(row["ratios"]) == {"mlx-lm", "llama.cpp"}
