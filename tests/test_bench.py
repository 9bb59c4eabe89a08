"""`orchard bench` building blocks: statistics, list syntax, roofline arithmetic, machine tables,
synthetic models, output formats (parsed back), the results store, reports and the PNG writer.

No timing thresholds here: samples are fabricated where a figure's arithmetic is under test.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import struct
import zlib

import mlx.core as mx
import pytest

from app.main import main
from mlxmodels.errors import OrchardError
from mlxmodels.profiling import machine, report, roofline, store, synthetic
from mlxmodels.profiling.engines import Test
from mlxmodels.profiling.runner import FIGURES, _aggregate, add_ratios, make_tests
from mlxmodels.profiling.stats import parse_counts, ratio, summarize

TINY_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=256, rms_norm_eps=1e-5,
                  rope_theta=10000.0, max_position_embeddings=512, tie_word_embeddings=False)
TINY_MOE = dict(TINY_LLAMA, model_type="qwen3_moe", head_dim=16, num_experts=8, num_experts_per_tok=2,
                moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)


@pytest.fixture()
def tiny_presets(monkeypatch):
    monkeypatch.setitem(synthetic.PRESETS, "tiny-llama", TINY_LLAMA)
    monkeypatch.setitem(synthetic.PRESETS, "tiny-moe", TINY_MOE)


# --- statistics --------------------------------------------------------------------------------

def test_summarize_matches_the_statistics_module():
    xs = [12.5, 11.0, 13.25, 12.0, 40.0]
    s = summarize(xs)
    # Python's statistics module is the reference; fsum-based arithmetic agrees to rounding.
    assert s["mean"] == pytest.approx(statistics.mean(xs), rel=1e-12)
    assert s["std"] == pytest.approx(statistics.stdev(xs), rel=1e-12)
    assert (s["min"], s["max"]) == (11.0, 40.0)
    assert summarize([7.0]) == {"mean": 7.0, "std": 0.0, "min": 7.0, "max": 7.0}
    assert summarize([]) is None and summarize([None, None]) is None
    assert ratio({"mean": 6.0}, {"mean": 3.0}) == 2.0 and ratio(None, {"mean": 1.0}) is None


def test_parse_counts_lists_and_ranges():
    assert parse_counts("128,512,2048", "-p") == [128, 512, 2048]
    assert parse_counts("128-1024*2", "-p") == [128, 256, 512, 1024]
    assert parse_counts("0-3000+1024", "-d", 0) == [0, 1024, 2048]
    assert parse_counts("16, 32", "-g") == [16, 32]
    for text, needle in [("0", "0 is too small"), ("abc", "'abc' is not a number"), ("64-32+8", "bad range"),
                         ("1-8*1", "bad range"), ("", "'' is not a number")]:
        with pytest.raises(OrchardError, match=needle):
            parse_counts(text, "-p")


def test_make_tests_follows_llama_bench_naming():
    names = [t.name for t in make_tests([512], [128], [0, 4096], [(64, 16)])]
    assert names == ["pp512", "tg128", "pp64+tg16", "pp512 @ d4096", "tg128 @ d4096", "pp64+tg16 @ d4096"]


# --- roofline ----------------------------------------------------------------------------------

def test_roofline_arithmetic():
    r = roofline.roofline(2e9, 25.0, 100.0)  # 2 GB per token at 25 tok/s = 50 GB/s of 100
    assert r["achieved_gbps"] == pytest.approx(50.0)
    assert r["percent_of_bandwidth"] == pytest.approx(50.0)
    assert r["ceiling_tps"] == pytest.approx(50.0)
    unknown = roofline.roofline(2e9, 25.0, None)
    assert unknown["percent_of_bandwidth"] is None and unknown["achieved_gbps"] == pytest.approx(50.0)


def _dense_param_count(c: dict, embed_rows: int) -> int:
    """Parameters a token reads in a Llama-shaped float model, counted from the config by hand."""
    h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    attn = h * h + 2 * h * kv + h * h
    per_layer = attn + 3 * h * i + 2 * h
    return L * per_layer + h + embed_rows * h + v * h  # + final norm, embedding rows read, LM head


def test_weight_bytes_per_token_dense(tiny_presets):
    model, _, _ = synthetic.build_synthetic("tiny-llama", bits=16)
    # fp32 on the CPU backend: 4 bytes each; the untied embedding is read one row per token.
    assert roofline.weight_bytes_per_token(model) == 4 * _dense_param_count(TINY_LLAMA, 1)


def test_parameter_count_ignores_quantization(tiny_presets):
    from mlxmodels.profiling.bench import parameter_count

    expected = _dense_param_count(TINY_LLAMA, TINY_LLAMA["vocab_size"])  # every embedding row this time
    for bits in (16, 4, 8):
        model, _, _ = synthetic.build_synthetic("tiny-llama", bits=bits, group_size=32, cpu_weights="mlx")
        assert parameter_count(model) == expected, bits


def test_weight_bytes_per_token_counts_only_the_routed_experts(tiny_presets):
    model, _, config = synthetic.build_synthetic("tiny-moe", bits=16)
    c = TINY_MOE
    h, L, E, k, mi = c["hidden_size"], c["num_hidden_layers"], c["num_experts"], c["num_experts_per_tok"], 32
    q, kv = c["num_attention_heads"] * 16, c["num_key_value_heads"] * 16
    attn = h * q + 2 * h * kv + q * h + 2 * 16  # q/k/v/o plus Qwen3's per-head q/k norms
    experts = k * 3 * h * mi  # top-k of the E experts' gate/up/down
    router = h * E
    expected = L * (attn + experts + router + 2 * h) + h + h + c["vocab_size"] * h
    assert roofline.weight_bytes_per_token(model) == 4 * expected


def test_cache_read_bytes_counts_filled_positions(tiny_presets):
    model, _, _ = synthetic.build_synthetic("tiny-llama", bits=16)
    cache = model.make_cache()
    mx.eval(model(mx.array([list(range(10))]), cache))
    c = TINY_LLAMA
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    # keys + values, every layer, 10 positions, fp32 (the 256-token buffer's empty tail is not read)
    assert roofline.cache_read_bytes(cache) == 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * 10 * head_dim * 4


# --- machine -----------------------------------------------------------------------------------

def test_bandwidth_tables():
    assert machine.apple_bandwidth("Apple M4 Max", 16) == 546
    assert machine.apple_bandwidth("Apple M4 Max", 14) == 410  # the binned part
    assert machine.apple_bandwidth("Apple M4") == 120
    assert machine.apple_bandwidth("Apple M1 Pro") == 200
    assert machine.apple_bandwidth("Intel Xeon") is None
    assert machine.cuda_bandwidth("NVIDIA H100 80GB HBM3") == 3350
    assert machine.cuda_bandwidth("NVIDIA H100 PCIe") == 2000
    assert machine.cuda_bandwidth("NVIDIA H200") == 4800


def test_cpu_bandwidth_keeps_the_best_measurement(tmp_path):
    info = {"backend": "cpu", "cpu": "Test CPU", "cpu_cores": 2, "memory_gb": 8.0, "chip": "Test CPU"}
    cache = tmp_path / "bw.json"
    assert machine.memory_bandwidth(info, cache, measure=False) == (None, "not measured")
    cache.write_text(json.dumps({"Test CPU|2|8.0": 1e6}))  # higher than any real copy: kept
    assert machine.memory_bandwidth(info, cache) == (1e6, "measured copy, best seen")
    cache.write_text(json.dumps({"Test CPU|2|8.0": 1e-3}))  # lower than any real copy: replaced
    bw, _ = machine.memory_bandwidth(info, cache)
    assert bw > 1e-3 and json.loads(cache.read_text())["Test CPU|2|8.0"] == bw


def test_machine_and_engine_info_fields():
    m, e = machine.machine_info(), machine.engine_info()
    assert m["backend"] in ("cpu", "metal", "cuda") and m["cpu_cores"] >= 1 and m["memory_gb"] > 0 and m["chip"]
    assert e["mlx"] == mx.__version__ and e["name"] == "orchard"


# --- synthetic models --------------------------------------------------------------------------

def test_synthetic_weights_are_packed_and_finite(tiny_presets):
    config = synthetic.preset_config("tiny-llama", bits=4, group_size=32)
    weights = synthetic.synthetic_weights(config)
    w = weights["model.layers.0.self_attn.q_proj.weight"]
    assert w.dtype == mx.uint32 and w.shape == (64, 64 * 4 // 32)
    assert weights["model.layers.0.self_attn.q_proj.scales"].shape == (64, 2)
    model, _, _ = synthetic.build_synthetic("tiny-llama", bits=4, group_size=32)
    logits = model(mx.array([[1, 2, 3]]))
    assert logits.shape == (1, 3, 256) and mx.all(mx.isfinite(logits)).item()


def test_synthetic_presets_have_the_real_shapes():
    c = synthetic.PRESETS["llama-3.1-8b"]
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]) == (4096, 14336, 32, 128256)
    assert synthetic.PRESETS["qwen3-30b-a3b"]["num_experts"] == 128


def test_synthetic_errors(monkeypatch):
    with pytest.raises(OrchardError, match="unknown model 'nope'"):
        synthetic.preset_config("nope")
    with pytest.raises(OrchardError, match="--bits: 7"):
        synthetic.preset_config("llama-3.2-1b", bits=7)
    from mlxmodels import models

    monkeypatch.delitem(models.FAMILIES, "mamba")
    with pytest.raises(OrchardError, match="'mamba' model family is not available"):
        synthetic.preset_config("mamba-1.4b")


# --- output formats ----------------------------------------------------------------------------

def _fake_sample(ttft_ms, decode_tps, prefill=True, decode=True):
    return {"ttft_ms": ttft_ms, "ttft_cached_ms": ttft_ms / 10 if prefill else None,
            "prefill_tps": 1000 * 64 / ttft_ms if prefill else None, "decode_tps": decode_tps if decode else None,
            "peak_memory_gb": 0.5, "peak_rss_gb": 1.0, "kv_read_bytes": 1000}


def _fake_doc(compare=True) -> dict:
    tests = [Test(64, 0), Test(0, 16)]
    ours = [_aggregate(tests[0], [_fake_sample(100, None, decode=False), _fake_sample(120, None, decode=False)], 10**6, 50.0),
            _aggregate(tests[1], [_fake_sample(20, 40.0, prefill=False), _fake_sample(22, 44.0, prefill=False)], 10**6, 50.0)]
    doc = {"machine": {"chip": "Apple M4", "cpu_cores": 10, "memory_gb": 16, "os": "macOS 15", "backend": "metal",
                       "bandwidth_gbps": 120.0, "bandwidth_source": "Apple spec"},
           "engine": {"name": "orchard", "label": "orchard (float16)", "mlx": "0.0", "commit": "abc"},
           "model": {"name": "m", "model_type": "llama", "quantization": {"bits": 4, "group_size": 64, "bits_per_weight": 4.5},
                     "compute_dtype": "float16", "load_time_s": 1.0, "weight_bytes_per_token": 10**6},
           "settings": {"repetitions": 2, "timestamp": "2026-01-01T00:00:00Z"}, "results": ours}
    if compare:
        theirs = [_aggregate(tests[0], [_fake_sample(200, None, decode=False)] * 2, 10**6, 50.0),
                  _aggregate(tests[1], [_fake_sample(40, 20.0, prefill=False)] * 2, 10**6, 50.0)]
        add_ratios(ours, theirs, "mlx-lm")
        doc["baselines"] = [{"engine": {"name": "mlx-lm", "label": "mlx-lm (float32)"}, "model": {}, "results": theirs}]
    return doc


def test_aggregate_and_ratios():
    doc = _fake_doc()
    pp, tg = doc["results"]
    assert pp["ttft_ms"] == summarize([100, 120]) and pp["decode_tps"] is None and pp["roofline"] is None
    assert tg["decode_tps"]["mean"] == pytest.approx(42.0)
    # roofline on the mean: (1e6 weight + 1000 KV bytes) x 42 tok/s
    assert tg["roofline"]["achieved_gbps"] == pytest.approx(1.001e6 * 42 / 1e9)
    assert pp["ratios"]["mlx-lm"]["ttft_ms"] == pytest.approx(110 / 200) and tg["ratios"]["mlx-lm"]["decode_tps"] == pytest.approx(42 / 20)


def test_json_contract_round_trip():
    doc = json.loads(json.dumps(_fake_doc()))
    assert {"machine", "engine", "model", "results", "baselines"} <= set(doc)
    for row in doc["results"] + doc["baselines"][0]["results"]:
        assert {"test", "n_prompt", "n_gen", "depth", "ttft_ms", "prefill_tps", "decode_tps", "peak_memory_gb",
                "samples"} <= set(row)
        for f in ("ttft_ms", "prefill_tps", "decode_tps"):
            assert row[f] is None or set(row[f]) == {"mean", "std", "min", "max"}
    assert set(doc["results"][0]["ratios"]["mlx-lm"]) == set(FIGURES)


def test_csv_round_trip():
    doc = _fake_doc()
    rows = list(csv.DictReader(io.StringIO(report.to_csv(doc))))
    assert [(r["engine"], r["test"]) for r in rows] == [("orchard", "pp64"), ("orchard", "tg16"),
                                                        ("mlx-lm", "pp64"), ("mlx-lm", "tg16")]
    assert float(rows[1]["decode_tps_mean"]) == pytest.approx(42.0)
    assert float(rows[0]["ttft_ms_std"]) == pytest.approx(statistics.stdev([100, 120]))
    assert rows[0]["decode_tps_mean"] == "" and rows[0]["repetitions"] == "2"


def test_markdown_table_rows():
    text = report.markdown(_fake_doc())
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| test | engine | TTFT ms")
    assert "| tg16 | orchard | 21.0 ± 1.4 |" in text
    assert "| tg16 | **orchard / mlx-lm** | 0.53x | – | – | 2.10x |" in text
    assert "Apple M4" in text and "120.0 GB/s (Apple spec)" in text



def test_two_baselines_each_get_ratio_rows():
    doc = _fake_doc()
    theirs = [dict(r) for r in doc["baselines"][0]["results"]]
    theirs[1] = _aggregate(Test(0, 16), [_fake_sample(10, 84.0, prefill=False)] * 2, 10**6, 50.0)
    add_ratios(doc["results"], theirs, "llama.cpp")
    doc["baselines"].append({"engine": {"name": "llama.cpp", "label": "llama.cpp (2 threads)"}, "model": {},
                             "results": theirs})
    text = report.markdown(doc)
    tg = [line for line in text.splitlines() if line.startswith("| tg16 ")]
    assert [line.split(" | ")[1] for line in tg] == ["orchard", "mlx-lm", "llama.cpp", "**orchard / mlx-lm**",
                                                      "**orchard / llama.cpp**"]
    assert tg[4].split(" | ")[5] == "0.50x"  # 42 / 84 decode tok/s
    assert "**baseline** llama.cpp (2 threads)" in text
    assert [r["engine"] for r in report.comparison_rows([doc], "decode_tps")] == ["orchard", "mlx-lm", "llama.cpp"]


def test_records_stored_with_one_baseline_still_render():
    """Results stored before --compare took several engines hold `baseline` and per-row `ratio`."""
    doc = _fake_doc()
    old = {k: v for k, v in doc.items() if k != "baselines"}
    old["baseline"] = doc["baselines"][0]
    old["results"] = [{**{k: v for k, v in r.items() if k != "ratios"}, "ratio": r["ratios"]["mlx-lm"]}
                      for r in doc["results"]]
    assert report.markdown(old) == report.markdown(doc)
    assert report.to_csv(old) == report.to_csv(doc)


def test_parse_compare():
    from mlxmodels.profiling.bench import parse_compare

    assert parse_compare(None) == [] and parse_compare("mlx-lm") == ["mlx-lm"]
    assert parse_compare("mlx-lm, llama.cpp,mlx-lm") == ["mlx-lm", "llama.cpp"]
    with pytest.raises(OrchardError, match="unknown engine 'ollama'"):
        parse_compare("mlx-lm,ollama")

# --- results store and reports -----------------------------------------------------------------

def test_store_appends_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path))
    path = store.append(_fake_doc(compare=False))
    store.append(_fake_doc())
    assert path == tmp_path / "bench" / "results.jsonl"
    assert len(path.read_text().splitlines()) == 2
    records = store.read_records(path)
    assert records[1]["results"][1]["ratios"]["mlx-lm"]["decode_tps"] == pytest.approx(2.1)
    assert list(path.parent.glob("*.tmp")) == []


def test_store_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OrchardError, match="cannot write the results store"):
        store.append({}, blocker / "results.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(OrchardError, match="bad.jsonl:2: not a JSON benchmark record"):
        store.read_records(bad)
    bad.write_text('{"a": 1}\n')
    with pytest.raises(OrchardError, match="not an `orchard bench` result"):
        store.read_records(bad)


def test_report_table_and_terminal_plot():
    other = _fake_doc(compare=False)
    other["machine"]["chip"] = "Apple M1"
    rows = report.comparison_rows([_fake_doc(), other], "decode_tps")
    assert [(r["chip"], r["engine"]) for r in rows] == [("Apple M4", "orchard"), ("Apple M4", "mlx-lm"),
                                                        ("Apple M1", "orchard")]
    plot = report.terminal_plot(rows, "decode_tps", width=20).splitlines()
    # The largest mean gets the full width; 20 / 42 x 20 columns = 9.52 -> 9 full blocks + a 4/8 block.
    assert plot[1].endswith("│" + "█" * 20 + " 42.0")
    assert plot[2].endswith("│" + "█" * 9 + "▌ 20.0")
    assert plot[1].startswith("Apple M4 · orchard")
    assert "| Apple M1 | metal | m | orchard | tg16 | 42.0 ± 2.8 |" in report.comparison_table(rows, "decode_tps")


def _decode_png(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    raw = zlib.decompress(chunks[b"IDAT"])
    assert (depth, colour) == (8, 2) and len(raw) == h * (1 + 3 * w)
    return w, h, raw


def test_png_chart(tmp_path):
    rows = report.comparison_rows([_fake_doc()], "decode_tps")
    out = tmp_path / "chart.png"
    report.png_chart(rows, "decode_tps", out)
    w, h, raw = _decode_png(out.read_bytes())
    import numpy as np

    img = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + 3 * w)[:, 1:].reshape(h, w, 3)
    from mlxmodels.profiling.png import PALETTE

    # The orchard bar (42 t/s) is twice as long as the mlx-lm one (20 t/s): count each colour's pixels per row.
    lengths = []
    for colour in (PALETTE[1], PALETTE[0]):  # engines sorted: mlx-lm=0, orchard=1
        mask = np.all(img == np.array(colour, dtype=np.uint8), axis=-1)
        lengths.append(mask.sum(axis=1).max())
    assert lengths[0] == 420 and abs(lengths[1] - 420 * 20 / 42) <= 1


# --- CLI errors --------------------------------------------------------------------------------

def _one_line_error(capsys, *argv) -> str:
    code = main(["bench", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("orchard: error: "), err
    return lines[0]


def test_cli_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path))
    assert "unknown model 'nope'" in _one_line_error(capsys, "--synthetic", "nope", "--no-store")
    assert "-p/--n-prompt: 0 is too small" in _one_line_error(capsys, "-p", "0")
    assert "-g/--n-gen: 'x' is not a number" in _one_line_error(capsys, "-g", "x")
    assert "--batch 2 runs Orchard only" in _one_line_error(capsys, "--batch", "2", "--compare", "mlx-lm", "--no-store")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path / "file"))
    assert "cannot write the results store" in _one_line_error(capsys, "-p", "8")
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path))
    assert "mlx-lm cannot load a .gguf file" in _one_line_error(capsys, "-m", "x.gguf", "--compare", "mlx-lm,llama.cpp",
                                                                "--no-store")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("mlx_lm", "llama_cpp") else real(name, *a))
    assert "needs the mlx-lm package" in _one_line_error(capsys, "--compare", "mlx-lm", "--no-store")
    assert "needs llama-cpp-python, which is not installed" in _one_line_error(capsys, "--compare", "llama.cpp", "--no-store")
    assert "no such file" in _one_line_error(capsys, "report", str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("name", sorted(synthetic.PRESETS))
def test_every_preset_builds_with_its_family(name):
    """Each preset's config is read by its family and gives one cache per layer (built lazily: no
    weights are materialised); --layers keeps the first layers and their kinds."""
    from mlxmodels.models import build_model

    config = synthetic.preset_config(name)
    model = build_model(config)
    assert len(model.make_cache()) == config["num_hidden_layers"] == len(model.layers)
    first = synthetic.preset_config(name, layers=2)
    short = build_model(first)
    assert len(short.layers) == 2
    assert [type(c).__name__ for c in short.make_cache()] == [type(c).__name__ for c in model.make_cache()[:2]]


def test_overrides_and_first_layers_change_the_preset():
    from app.bench import parse_overrides

    overrides = parse_overrides(["num_experts=16", "num_experts_per_tok=2", "norm_topk_prob=false"])
    assert overrides == {"num_experts": 16, "num_experts_per_tok": 2, "norm_topk_prob": False}
    assert parse_overrides(["model_type=qwen3_next"]) == {"model_type": "qwen3_next"}  # text stays text
    config = synthetic.preset_config("qwen3-next-80b-a3b", layers=4, overrides=overrides)
    assert (config["num_experts"], config["num_hidden_layers"]) == (16, 4)
    with pytest.raises(OrchardError, match="'num_expert' is not a field"):
        synthetic.preset_config("qwen3-next-80b-a3b", overrides={"num_expert": 16})
    with pytest.raises(OrchardError, match="must be FIELD=VALUE"):
        parse_overrides(["num_experts"])
    with pytest.raises(OrchardError, match="--layers: 49 is not between 1 and 48"):
        synthetic.preset_config("qwen3-next-80b-a3b", layers=49)
