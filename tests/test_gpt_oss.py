"""gpt-oss beyond logit parity (tests/test_parity.py runs the gpt_oss* fixtures against transformers).

- Attention sinks in every attention path (CPU math, MLX's fused op, the hand-written soft-capping
  path, a quantized KV cache) against a numpy evaluation of transformers' eager formula: the sink
  logit joins the softmax, its column is dropped.
- The MoE options (router bias, expert biases, clamped SwiGLU, the checkpoint's interleaved gate/up
  columns) against a numpy evaluation of transformers' GptOssMLP, in float, affine and MXFP4.
- MXFP4: the checkpoint's `*_blocks` / `*_scales` bytes are MLX's mxfp4 layout (dequantized values
  equal the format's), a checkpoint loads without a float copy of its experts (peak memory), and
  `orchard convert` keeps them (or requantizes them when fewer bits are asked, or dequantizes).
- The cache per layer kind, a quantized KV cache, config errors, a config that disagrees with the
  checkpoint, and `orchard run`.

Tolerances: float32 on both sides differing only in summation order: 1e-5 of the output scale, ~10x
the rounding noise measured here and far below what a lost sink, bias or clamp changes (> 1e-2).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import FIXTURES
from mlx.utils import tree_flatten
from test_errors import assert_one_line_error, run_cli

import mlxmodels
from mlxmodels.cache import KVCache, QuantizedKVCache, RotatingKVCache, window_mask
from mlxmodels.convert import ConvertOptions, convert
from mlxmodels.errors import ConfigError, WeightsError
from mlxmodels.layers import cpu_math
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.moe import SORT_THRESHOLD, SparseMoE
from mlxmodels.models import build_model
from mlxmodels.models.gpt_oss import split_experts

TIGHT = 1e-5
FIXTURE_NAMES = ["gpt_oss", "gpt_oss_hf4", "gpt_oss_mxfp4"]
FP4 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def assert_close(ours, theirs, what: str, tolerance: float = TIGHT) -> None:
    ours, theirs = np.array(ours), np.array(theirs)
    scale = max(np.abs(theirs).max(), 1e-6)
    error = np.abs(ours - theirs).max()
    assert error <= tolerance * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def reference_ids(name: str) -> np.ndarray:
    return np.load(FIXTURES / name / "reference.npz")["input_ids"]


@pytest.fixture(scope="module")
def loaded():
    models = {}

    def get(name):
        if name not in models:
            models[name] = mlxmodels.load_model(FIXTURES / name)
        return models[name]

    return get


# --- attention sinks --------------------------------------------------------------------------

def numpy_sink_attention(q, k, v, scale, sinks, allowed, softcap=None) -> np.ndarray:
    """transformers' eager_attention_forward: scores (+ mask), the sink column appended, softmax over
    the row, the sink dropped, times the values."""
    q, k, v, sinks = (np.array(t, dtype=np.float64) for t in (q, k, v, sinks))
    groups = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    scores = q @ k.swapaxes(-1, -2) * scale
    if softcap is not None:
        scores = np.tanh(scores / softcap) * softcap
    scores = np.where(np.array(allowed), scores, -np.inf)
    sink = np.broadcast_to(sinks[None, :, None, None], (*scores.shape[:-1], 1))
    combined = np.concatenate([scores, sink], axis=-1)
    weights = np.exp(combined - combined.max(axis=-1, keepdims=True))
    weights = weights / weights.sum(axis=-1, keepdims=True)
    return weights[..., :-1] @ v


def sink_attention_layer(softcap=None) -> Attention:
    spec = AttentionSpec(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32, rope=None,
                         scale=32 ** -0.5, sliding_window=None, logit_softcap=softcap, sinks=True)
    layer = Attention(spec)
    layer.sinks = mx.array([2.0, -1.0, 0.5, 4.0])  # one head gives most of its weight to the sink
    return layer


# (queries, keys, window): a prefill, a decode step, a chunk after a prefix, a windowed chunk.
SINK_CASES = [(12, 12, None), (1, 9, None), (5, 12, None), (7, 12, 4)]


@pytest.mark.parametrize("path", ["cpu-math", "mlx-ops"])
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("queries,keys,window", SINK_CASES)
def test_sinks_in_every_attention_path(path, softcap, queries, keys, window, monkeypatch):
    if path == "mlx-ops":
        monkeypatch.setenv("ORCHARD_CPU_MATH", "mlx")
    mx.random.seed(queries * 31 + keys)
    layer = sink_attention_layer(softcap)
    q, k, v = (mx.random.normal((1, h, n, 32)) for h, n in ((4, queries), (2, keys), (2, keys)))
    allowed = window_mask(keys, queries, keys, window)
    mask = allowed if window is not None else ("causal" if queries > 1 else None)
    expected = numpy_sink_attention(q, k, v, layer.scale, layer.sinks, allowed, softcap)
    assert_close(layer._attend(q, k, v, mask), expected, f"{path}, softcap {softcap}")
    # The sinks matter: the same attention without them is far away.
    assert np.abs(np.array(layer._attend(q, k, v, mask)) - numpy_sink_attention(
        q, k, v, layer.scale, mx.full((4,), -1e9), allowed, softcap)).max() > 1e-2


def test_cpu_math_sinks_match_mlx_fused_attention():
    """cpu_math's multiply-add softmax with sinks against MLX's fused op given the same sinks."""
    mx.random.seed(7)
    q, k, v = mx.random.normal((2, 8, 6, 32)), mx.random.normal((2, 2, 6, 32)), mx.random.normal((2, 2, 6, 32))
    sinks = mx.random.normal((8,)) * 2
    fused = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.2, mask="causal", sinks=sinks)
    assert_close(cpu_math.attention(q, k, v, 0.2, "causal", sinks=sinks), fused, "cpu_math vs fused")


@pytest.mark.parametrize("queries", [1, 6])
def test_sinks_over_a_quantized_kv_cache(queries):
    """A quantized cache's keys and values, dequantized, through the same sink softmax."""
    mx.random.seed(queries)
    layer = sink_attention_layer()
    cache = QuantizedKVCache(bits=8, group_size=32)
    q = mx.random.normal((1, 4, queries, 32))
    k, v = mx.random.normal((1, 2, 10, 32)), mx.random.normal((1, 2, 10, 32))
    qk, qv = cache.update_and_fetch(k, v)
    out = layer._attend_quantized(q[..., -queries:, :], qk, qv, cache.mask(queries), cache)
    kd, vd = (mx.dequantize(*t, group_size=32, bits=8) for t in (qk, qv))
    expected = numpy_sink_attention(q, kd, vd, layer.scale, layer.sinks, window_mask(10, queries, 10, None))
    assert_close(out, expected, f"quantized cache, {queries} queries")


# --- the MoE block ----------------------------------------------------------------------------

def numpy_gpt_oss_mlp(x, router_w, router_b, gate_up, gate_up_b, down, down_b, k, limit, alpha) -> np.ndarray:
    """transformers' GptOssMLP: top-k router logits, softmax over those k; each expert's fused
    gate_up [D, 2I] (gate even columns, up odd), the clamped SwiGLU, down [I, D], biases."""
    x, router_w, router_b, gate_up, gate_up_b, down, down_b = (
        np.array(t, np.float64) for t in (x, router_w, router_b, gate_up, gate_up_b, down, down_b))
    logits = x @ router_w.T + router_b
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    chosen = np.take_along_axis(logits, top, axis=-1)
    weights = np.exp(chosen - chosen.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j, e in enumerate(top[t]):
            fused = x[t] @ gate_up[e] + gate_up_b[e]
            gate, up = np.minimum(fused[0::2], limit), np.clip(fused[1::2], -limit, limit)
            hidden = (up + 1) * gate / (1 + np.exp(-alpha * gate))
            out[t] += weights[t, j] * (hidden @ down[e] + down_b[e])
    return out


def gpt_oss_moe(E=4, D=64, I=32, k=2, limit=1.0, alpha=1.702, seed=0):
    """A SparseMoE with gpt-oss's options, its weights given in transformers' fused layout (and
    mapped by the family's split_experts), and those HF-layout weights."""
    rng = np.random.default_rng(seed)
    hf = {
        "router_w": rng.normal(0, 1, (E, D)), "router_b": rng.normal(0, 2, (E,)),
        "gate_up": rng.normal(0, 1.5 / np.sqrt(D), (E, D, 2 * I)), "gate_up_b": rng.normal(0, 0.5, (E, 2 * I)),
        "down": rng.normal(0, 1 / np.sqrt(I), (E, I, D)), "down_b": rng.normal(0, 0.5, (E, D)),
    }
    hf = {n: mx.array(v.astype(np.float32)) for n, v in hf.items()}
    moe = SparseMoE(D, I, E, k, norm_topk_prob=True, router_bias=True, expert_bias=True,
                    swiglu_limit=limit, swiglu_alpha=alpha)
    weights = split_experts({
        "experts.gate_up_proj": hf["gate_up"], "experts.gate_up_proj_bias": hf["gate_up_b"],
        "experts.down_proj": hf["down"], "experts.down_proj_bias": hf["down_b"],
    }, "experts")
    weights.update({"gate.weight": hf["router_w"], "gate.bias": hf["router_b"]})
    moe.load_weights(list(weights.items()), strict=True)
    return moe, hf


@pytest.mark.parametrize("tokens", [3, SORT_THRESHOLD])  # unsorted gather, and pairs sorted by expert
@pytest.mark.parametrize("path", ["cpu-math", "mlx-ops"])
def test_moe_matches_the_reference_mlp(tokens, path, monkeypatch):
    if path == "mlx-ops":
        monkeypatch.setenv("ORCHARD_CPU_MATH", "mlx")
    moe, hf = gpt_oss_moe(seed=tokens)
    x = mx.random.normal((tokens, 64), key=mx.random.key(tokens))
    expected = numpy_gpt_oss_mlp(x, *hf.values(), k=2, limit=1.0, alpha=1.702)
    assert_close(moe(x), expected, f"{tokens} tokens")
    # The clamp is active here: without it the output is far away.
    unclamped = numpy_gpt_oss_mlp(x, *hf.values(), k=2, limit=1e9, alpha=1.702)
    assert np.abs(unclamped - expected).max() > 1e-2 * np.abs(expected).max()


@pytest.mark.parametrize("mode,group_size,bits", [("affine", 32, 8), ("mxfp4", 32, 4)])
def test_quantized_experts_keep_their_biases(mode, group_size, bits):
    """Quantized experts (gather_qmm) with float biases equal the float experts given the
    dequantized weights."""
    moe, _ = gpt_oss_moe(seed=5)
    nn.quantize(moe, group_size=group_size, bits=bits, mode=mode,
                class_predicate=lambda p, m: p.startswith("experts."))
    reference, _ = gpt_oss_moe(seed=5)
    for name in ("gate_proj", "up_proj", "down_proj"):
        q = moe.experts[name]
        assert q.mode == mode and "bias" in q
        reference.experts[name].weight = mx.dequantize(q.weight, q.scales, q.get("biases"), group_size, bits, mode)
    x = mx.random.normal((SORT_THRESHOLD, 64), key=mx.random.key(1))
    assert_close(moe(x), reference(x), f"{mode} experts")


# --- MXFP4 checkpoints ------------------------------------------------------------------------

def format_dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MXFP4 by its definition: two E2M1 codes a byte (even element in the lower nibble) times
    2^(scale - 127) per 32 values; [..., out, G, 16], [..., out, G] -> [..., out, 32 G]."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    values = FP4[codes] * np.exp2(scales.astype(np.float32) - 127)[..., None]
    return values.reshape(*values.shape[:-2], -1)


def test_checkpoint_bytes_are_mlx_mxfp4(loaded):
    """The experts Orchard holds dequantize (with MLX's mxfp4 mode) to exactly the format's values of
    the checkpoint's bytes; gate and up are the even and odd rows of the fused gate_up."""
    model = loaded("gpt_oss_mxfp4")
    source = mx.load(str(FIXTURES / "gpt_oss_mxfp4" / "model.safetensors"))
    for i, layer in enumerate(model.layers):
        prefix = f"model.layers.{i}.mlp.experts"
        fused = format_dequantize(np.array(source[f"{prefix}.gate_up_proj_blocks"]),
                                  np.array(source[f"{prefix}.gate_up_proj_scales"]))
        down = format_dequantize(np.array(source[f"{prefix}.down_proj_blocks"]),
                                 np.array(source[f"{prefix}.down_proj_scales"]))
        for name, expected in (("gate_proj", fused[:, 0::2]), ("up_proj", fused[:, 1::2]), ("down_proj", down)):
            q = layer.mlp.experts[name]
            assert (q.mode, q.bits, q.group_size, q.weight.dtype, q.scales.dtype) == (
                "mxfp4", 4, 32, mx.uint32, mx.uint8)
            ours = mx.dequantize(q.weight, q.scales, None, group_size=32, bits=4, mode="mxfp4", dtype=mx.float32)
            np.testing.assert_array_equal(np.array(ours), expected, err_msg=f"layer {i} {name}")
        np.testing.assert_array_equal(np.array(layer.mlp.experts.gate_proj.bias),
                                      np.array(source[f"{prefix}.gate_up_proj_bias"])[:, 0::2])


def write_mxfp4_checkpoint(directory: Path, hidden=256, intermediate=512, experts=8) -> int:
    """An HF-format gpt-oss checkpoint whose MXFP4 experts dominate its size; returns the experts'
    float32 size. Non-expert tensors are a freshly built model's, under the checkpoint's names."""
    config = json.loads((FIXTURES / "gpt_oss_mxfp4" / "config.json").read_text())
    config.update(hidden_size=hidden, intermediate_size=intermediate, num_local_experts=experts, head_dim=64)
    tensors = {k.replace(".mlp.gate.", ".mlp.router."): v
               for k, v in tree_flatten(build_model(config).parameters()) if ".experts." not in k}
    rng = np.random.default_rng(0)
    float_bytes = 0
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}.mlp.experts"
        shapes = {"gate_up_proj": (2 * intermediate, hidden), "down_proj": (hidden, intermediate)}
        for name, (out, inputs) in shapes.items():
            shape = (experts, out, inputs // 32)
            tensors[f"{prefix}.{name}_blocks"] = mx.array(rng.integers(0, 256, (*shape, 16), dtype=np.uint8))
            tensors[f"{prefix}.{name}_scales"] = mx.array(rng.integers(120, 128, shape, dtype=np.uint8))
            tensors[f"{prefix}.{name}_bias"] = mx.zeros((experts, out))
            float_bytes += experts * out * inputs * 4
    directory.mkdir()
    mx.save_safetensors(str(directory / "model.safetensors"), tensors)
    (directory / "config.json").write_text(json.dumps(config))
    return float_bytes


def test_mxfp4_checkpoint_loads_without_a_float_copy(tmp_path):
    """Peak MLX memory while loading stays near the checkpoint's own size (its arrays plus the packed
    gate/up rows split out of the fused tensor), far below the experts' float32 size (4.7x the file
    here): dequantizing them even once would exceed the bound."""
    directory = tmp_path / "mxfp4"
    float_bytes = write_mxfp4_checkpoint(directory)
    file_bytes = (directory / "model.safetensors").stat().st_size
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    model = mlxmodels.load_model(directory)
    mx.eval(model.parameters())
    peak = mx.get_peak_memory() - before
    assert peak < 1.5 * file_bytes < float_bytes / 3, (peak, file_bytes, float_bytes)
    assert all(layer.mlp.experts.up_proj.mode == "mxfp4" for layer in model.layers)
    assert model(mx.array([[1, 2, 3]])).shape == (1, 3, 128)


# --- conversion ---------------------------------------------------------------------------------

def mlx_lm_comparable(directory: Path) -> None:
    """mlx-lm 0.32's gpt-oss fixes the SwiGLU limit at 7 and truncates YaRN's correction range (see
    MLX_LM_DISAGREES_WITH_TRANSFORMERS in test_convert.py): give both loaders that model."""
    config = json.loads((directory / "config.json").read_text())
    config["swiglu_limit"] = 7.0
    config["rope_scaling"]["truncate"] = True
    (directory / "config.json").write_text(json.dumps(config))


def assert_mlx_lm_agrees(directory: Path, name: str) -> None:
    from mlx_lm import load as mlx_lm_load

    ids = mx.array(reference_ids(name))
    theirs, _ = mlx_lm_load(str(directory))
    theirs.set_dtype(mx.float32)
    np.testing.assert_allclose(np.array(mlxmodels.load_model(directory)(ids)), np.array(theirs(ids)),
                               atol=1e-4, rtol=1e-4)


def test_convert_keeps_mxfp4_experts(tmp_path):
    """4 bits asked: the MXFP4 experts are written as they are (same bytes, per-module `mode`), the
    rest quantized (test_convert.py checks the logits against MLX's quantization of the source);
    Orchard and mlx-lm read the result alike."""
    out = tmp_path / "q4"
    convert(FIXTURES / "gpt_oss_mxfp4", out, ConvertOptions(bits=4, dtype="float32"))
    q = json.loads((out / "config.json").read_text())["quantization"]
    for i in range(2):
        for name in ("gate_proj", "up_proj", "down_proj"):
            assert q[f"model.layers.{i}.mlp.experts.{name}"] == {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    written = mx.load(str(out / "model.safetensors"))
    source = mx.load(str(FIXTURES / "gpt_oss_mxfp4" / "model.safetensors"))
    up_blocks = np.array(source["model.layers.1.mlp.experts.gate_up_proj_blocks"])[:, 1::2]  # odd rows: up
    np.testing.assert_array_equal(
        np.array(written["model.layers.1.mlp.experts.up_proj.weight"]).view(np.uint8),
        up_blocks.reshape(*up_blocks.shape[:2], -1))
    assert written["model.layers.1.mlp.experts.up_proj.scales"].dtype == mx.uint8
    assert "model.layers.1.mlp.router.bias" in written and "model.layers.1.mlp.router.scales" not in written
    mlx_lm_comparable(out)
    assert_mlx_lm_agrees(out, "gpt_oss_mxfp4")


def test_mxfp4_default_with_affine_entries_and_a_quantized_router(tmp_path):
    """An MLX checkpoint whose default mode is mxfp4 with per-module affine entries (no `mode`: affine,
    as nn.quantize and mlx-lm read them), its router quantized to 8 bits (mlx-lm's recipe): both the
    loader and the converter read the entries as affine, and the router is dequantized to float."""
    out = tmp_path / "q4"
    convert(FIXTURES / "gpt_oss_mxfp4", out, ConvertOptions(bits=4, dtype="float32"))
    config = json.loads((out / "config.json").read_text())
    q = config["quantization"]
    q.update(group_size=32, bits=4, mode="mxfp4")
    for i in range(2):
        q[f"model.layers.{i}.self_attn.o_proj"] = {"group_size": 64, "bits": 4}
    q["model.layers.0.mlp.router"] = {"group_size": 32, "bits": 8}
    config["quantization_config"] = q
    (out / "config.json").write_text(json.dumps(config))
    weights = mx.load(str(out / "model.safetensors"))
    router = weights.pop("model.layers.0.mlp.router.weight")
    packed = mx.quantize(router, group_size=32, bits=8)
    weights.update(zip(("model.layers.0.mlp.router.weight", "model.layers.0.mlp.router.scales",
                        "model.layers.0.mlp.router.biases"), packed))
    mx.save_safetensors(str(out / "model.safetensors"), weights)

    model = mlxmodels.load_model(out, cpu_weights="mlx")  # MLX's quantized layers, as on a GPU
    dequantized = mx.dequantize(*packed, group_size=32, bits=8)
    np.testing.assert_array_equal(np.array(model.layers[0].mlp.gate.weight), np.array(dequantized))
    assert model.layers[1].self_attn.o_proj.mode == "affine" and model.layers[1].mlp.experts.up_proj.mode == "mxfp4"
    again = tmp_path / "again"
    convert(out, again, ConvertOptions(bits=4, dtype="float32"))
    ids = mx.array(reference_ids("gpt_oss_mxfp4"))
    assert_close(mlxmodels.load_model(again, cpu_weights="mlx")(ids), model(ids), "converted again")


def test_convert_requantizes_or_dequantizes_mxfp4(tmp_path):
    """Fewer bits than MXFP4's 4: the experts are dequantized and requantized affine at the asked
    bits; --dequantize: float experts with the format's exact values."""
    source = mlxmodels.load_model(FIXTURES / "gpt_oss_mxfp4")
    up = source.layers[0].mlp.experts.up_proj
    exact = mx.dequantize(up.weight, up.scales, None, group_size=32, bits=4, mode="mxfp4", dtype=mx.float32)

    out = tmp_path / "q2"
    convert(FIXTURES / "gpt_oss_mxfp4", out, ConvertOptions(bits=2, group_size=32, dtype="float32"))
    q = json.loads((out / "config.json").read_text())["quantization"]
    assert "model.layers.0.mlp.experts.up_proj" not in q  # the default: affine, 2 bits, group 32
    written = mx.load(str(out / "model.safetensors"))
    expected = mx.quantize(exact, group_size=32, bits=2)
    for part, value in zip(("weight", "scales", "biases"), expected):
        np.testing.assert_array_equal(np.array(written[f"model.layers.0.mlp.experts.up_proj.{part}"]), np.array(value))

    out = tmp_path / "float"
    convert(FIXTURES / "gpt_oss_mxfp4", out, ConvertOptions(dequantize=True, dtype="float32"))
    written = mx.load(str(out / "model.safetensors"))
    np.testing.assert_array_equal(np.array(written["model.layers.0.mlp.experts.up_proj.weight"]), np.array(exact))
    assert "quantization" not in json.loads((out / "config.json").read_text())
    ids = mx.array(reference_ids("gpt_oss_mxfp4"))
    assert_close(mlxmodels.load_model(out)(ids), source(ids), "dequantized")


def test_converted_affine_experts_with_biases_read_alike_in_mlx_lm(tmp_path):
    """Group 32 quantizes the experts too (the fixture's 32-wide inputs): their float biases ride
    along, and mlx-lm's SwitchGLU reads them the same way."""
    out = tmp_path / "q4"
    convert(FIXTURES / "gpt_oss", out, ConvertOptions(bits=4, group_size=32, dtype="float32"))
    written = mx.load(str(out / "model.safetensors"))
    assert {"weight", "scales", "biases", "bias"} <= {
        k.rpartition(".")[2] for k in written if k.startswith("model.layers.0.mlp.experts.down_proj.")}
    assert written["model.layers.0.mlp.router.weight"].dtype == mx.float32  # routers stay float
    mlx_lm_comparable(out)
    assert_mlx_lm_agrees(out, "gpt_oss")


# --- caches -----------------------------------------------------------------------------------

def test_cache_kinds_and_quantized_kv(loaded):
    """Sliding layers keep a rotating window (8 here), full layers a growing cache; --kv-bits
    quantizes the full layers' only. Decoding through the 8-bit cache stays near the float logits."""
    model = loaded("gpt_oss")
    cache = model.make_cache()
    assert [type(c) for c in cache] == [RotatingKVCache, KVCache]
    assert cache[0].window == 8
    per_token = 2 * 32 * 2 * 4  # 2 KV heads x head_dim 32 x (keys + values) x float32
    for _ in range(10):
        model(mx.array([[5] * 100]), cache=cache)
        # The window's buffer is bounded whatever the context (window - 1 + two steps of spare
        # history + the chunk); the full layer's holds every token.
        assert cache[0].nbytes <= (8 - 1 + 2 * RotatingKVCache.step + 100) * per_token
    assert cache[0].offset == cache[1].offset == 1000 and cache[1].nbytes >= 1000 * per_token
    ids = mx.array(reference_ids("gpt_oss"))

    quantized = mlxmodels.make_cache(model, kv_bits=8)
    assert [type(c) for c in quantized] == [RotatingKVCache, QuantizedKVCache]
    got = mx.concatenate([model(ids[:, :16], cache=quantized)] +
                         [model(ids[:, t : t + 1], cache=quantized) for t in range(16, 24)], axis=1)
    expected = model(ids)
    # 8-bit keys and values (group 32) move the logits by 1.3e-3 of their scale (measured; 4 bits:
    # 2.5e-2); losing the sinks moves them by 13%.
    assert_close(got, expected, "8-bit KV cache", 1e-2)


# --- config -----------------------------------------------------------------------------------

def test_older_config_reads_alike_and_defaults(loaded):
    new, old = loaded("gpt_oss").args, loaded("gpt_oss_hf4").args
    assert vars(new) == vars(old)
    assert new.layer_types == ["sliding_attention", "full_attention"] and new.rope["truncate"] is False
    config = json.loads((FIXTURES / "gpt_oss_hf4" / "config.json").read_text())
    for key in ("layer_types", "rope_scaling", "rope_theta", "head_dim", "sliding_window", "swiglu_limit"):
        del config[key]
    config["num_hidden_layers"] = 4
    args = build_model(config).args
    # transformers' GptOssConfig defaults: alternating from a sliding layer, YaRN over theta 150000.
    assert args.layer_types == ["sliding_attention", "full_attention"] * 2
    assert args.layer_windows == [128, None, 128, None]
    assert args.rope == {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "truncate": False, "original_max_position_embeddings": 4096, "rope_theta": 150000.0}
    assert (args.head_dim, args.swiglu_limit, args.swiglu_alpha) == (64, 7.0, 1.702)


MALFORMED = [
    ({"layer_types": ["sliding_attention"] * 3}, "layer_types"),
    ({"layer_types": ["sliding_attention", "linear_attention"]}, "layer_types"),
    ({"layer_types": "sliding_attention"}, "layer_types"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"num_local_experts": None}, "num_local_experts"),
    ({"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ({"sliding_window": 0}, "sliding_window"),
    ({"swiglu_limit": "7"}, "swiglu_limit"),
    ({"attention_bias": "yes"}, "attention_bias"),
    ({"hidden_size": None}, "hidden_size"),
]


@pytest.mark.parametrize("changes,field", MALFORMED, ids=[f"{f}-{i}" for i, (_, f) in enumerate(MALFORMED)])
def test_malformed_config_names_the_field(changes, field):
    config = json.loads((FIXTURES / "gpt_oss" / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config["_source"] = "config.json"
    with pytest.raises(ConfigError) as e:
        build_model(config)
    message = str(e.value)
    assert "\n" not in message and field in message and message.startswith("config.json: ")


@pytest.mark.parametrize("name,changes,needles", [
    ("gpt_oss", {"num_local_experts": 8}, ["model.layers.0.mlp.", "(4, 32)", "(8, 32)"]),
    ("gpt_oss", {"intermediate_size": 64}, ["model.layers.0.mlp.experts.", "(4, 32, 32)", "(4, 64, 32)"]),
    ("gpt_oss", {"attention_bias": False}, ["unexpected tensor", ".self_attn.", "_proj.bias"]),
    ("gpt_oss_mxfp4", {"intermediate_size": 64}, ["model.layers.0.mlp.experts.", "(4, 32, 4)", "(4, 64, 4)"]),
])
def test_config_disagreeing_with_checkpoint_names_layer_and_tensor(tmp_path, name, changes, needles):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / name, bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(changes)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError) as e:
        mlxmodels.load_model(bad)
    message = str(e.value)
    assert "\n" not in message and str(bad) in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_bad_layer_pattern_on_the_command_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "gpt_oss_hf4", bad)
    config = json.loads((bad / "config.json").read_text())
    config["layer_types"] = ["sliding_attention", "global_attention"]
    (bad / "config.json").write_text(json.dumps(config))
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, "layer_types", "global_attention", str(bad / "config.json"))


# --- the command line -------------------------------------------------------------------------

@pytest.mark.parametrize("name,extra", [(n, []) for n in FIXTURE_NAMES] + [("gpt_oss", ["--kv-bits", "8"])])
def test_orchard_run(name, extra, capsys):
    from app.main import main

    code = main(["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5",
                 *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    # The char tokenizer maps ids 0-127 to ASCII: five greedy tokens are at most five characters.
    assert len(captured.out.rstrip("\n")) <= 5
