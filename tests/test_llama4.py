"""Llama 4 (text) beyond logit parity (tests/test_parity.py runs its fixtures against transformers).

- Chunked attention: the mask against its definition; `ChunkedKVCache` returns exactly the current
  chunk's keys, stays bounded, rewinds only as far as the next token's chunk allows, and decoding
  past its compacting buffer gives the full-sequence logits.
- The MoE block (router score on the expert's input, sigmoid of the top-k logits, shared expert)
  against a numpy version of transformers' Llama4TextMoe, sorted and unsorted expert paths, top-1
  and top-2; saturated router logits still pick the largest.
- Attention temperature: the per-position query scale; a quantized KV cache on the NoPE layers.
- Checkpoint layouts: the multimodal "llama4" config and `language_model.` names, an mlx-lm style
  quantized router. Config reading: transformers' defaults, both dialects alike, one-line errors naming
  the field; a config that disagrees with the checkpoint names the tensor; `orchard run`.

Tolerance: float32 on both sides of each comparison, differing only in summation order; 1e-5 of the
output scale is ~10x that rounding noise and far below what a wrong chunk, scale or expert causes.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES

import mlxmodels
from mlxmodels.cache import ChunkedKVCache, KVCache, QuantizedKVCache, window_mask
from mlxmodels.errors import ConfigError, WeightsError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.moe import SORT_THRESHOLD, SparseMoE
from mlxmodels.models import build_model

TIGHT = 1e-5
FIXTURE_NAMES = ["llama4_text", "llama4_text_hf4", "llama4_text_pattern"]


def assert_close(ours, theirs, what: str, tolerance: float = TIGHT) -> None:
    ours, theirs = np.array(ours), np.array(theirs)
    scale = max(np.abs(theirs).max(), 1e-6)
    error = np.abs(ours - theirs).max()
    assert error <= tolerance * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def reference(name: str) -> tuple[mx.array, np.ndarray]:
    data = np.load(FIXTURES / name / "reference.npz")
    return mx.array(data["input_ids"]), data["logits"]


@pytest.fixture(scope="module")
def loaded():
    models = {}

    def get(name):
        if name not in models:
            models[name] = mlxmodels.load_model(FIXTURES / name)
        return models[name]

    return get


# --- chunked attention ---------------------------------------------------------------------------

@pytest.mark.parametrize("offset,queries,keys", [(24, 24, 24), (13, 3, 7), (17, 1, 2), (40, 12, 15)])
def test_chunk_mask_is_causal_within_each_chunk(offset, queries, keys):
    chunk = 8
    mask = np.array(window_mask(offset, queries, keys, None, chunk=chunk))
    for i, q in enumerate(range(offset - queries, offset)):
        for j, k in enumerate(range(offset - keys, offset)):
            assert mask[i, j] == (k <= q and k // chunk == q // chunk), (q, k)


def positions_tagged(start: int, count: int) -> mx.array:
    """[1, 1, count, 1] keys whose value is their position, so what a cache returns can be read off."""
    return mx.arange(start, start + count, dtype=mx.float32).reshape(1, 1, count, 1)


@pytest.mark.parametrize("sizes", [[1] * 30, [5, 1, 7, 1, 10, 3, 3], [11, 13], [30], [3, 17, 1, 1]])
def test_chunked_cache_returns_the_oldest_querys_chunk(sizes):
    """After each update the keys run from the chunk start of the oldest new query to the newest token,
    and the mask equals the chunked causal mask over those positions."""
    chunk, cache, start = 8, ChunkedKVCache(8), 0
    for size in sizes:
        k, _ = cache.update_and_fetch(positions_tagged(start, size), positions_tagged(start, size))
        first = start - start % chunk
        assert np.array(k).ravel().tolist() == list(range(first, start + size))
        mask = cache.mask(size)
        if size == 1:
            assert mask is None  # the returned keys are all in the query's chunk
        else:
            expected = window_mask(start + size, size, start + size - first, None, chunk)
            assert np.array_equal(np.array(mask), np.array(expected))
        start += size
    assert cache.offset == start


def test_chunked_cache_stays_bounded_and_rewinds_within_its_chunk():
    """600 single tokens through a chunk-8 cache: the buffer never exceeds the rotating cache's bound
    (chunk - 1 kept tokens + 2 x step spare + the new one).
    It rewinds n tokens only while the next token (at offset - n) keeps the earlier tokens of its chunk;
    a rewound cache fed the same tokens again returns what it returned the first time."""
    cache = ChunkedKVCache(8)
    for t in range(600):
        cache.update_and_fetch(positions_tagged(t, 1), positions_tagged(t, 1))
        assert cache.keys.shape[2] <= 8 - 1 + 2 * cache.step + 1
    held = cache.count
    assert held < 600
    for n in range(0, 600):
        assert cache.can_trim(n) == (held - n >= (600 - n) % 8), n
    assert not cache.can_trim(held + 1) and not cache.can_trim(-1)
    snapshot = cache.copy()
    assert type(snapshot) is ChunkedKVCache and snapshot.offset == 600
    n = max(n for n in range(held + 1) if cache.can_trim(n))
    assert cache.trim(n) == n and cache.offset == 600 - n
    for t in range(600 - n, 600):
        k, _ = cache.update_and_fetch(positions_tagged(t, 1), positions_tagged(t, 1))
        assert np.array(k).ravel().tolist() == list(range(t - t % 8, t + 1))
    assert cache.trim(held + 1) == 0  # beyond what it holds: refused, nothing changed
    assert cache.offset == 600


@pytest.mark.parametrize("name", ["llama4_text", "llama4_text_pattern"])
def test_decoding_past_the_compacting_buffer(name, loaded):
    """Prefill 250 tokens, then decode 20: the chunked layers' buffers compact past 256 entries while
    the full layers keep growing; logits as in one full-sequence forward (whose chunked layers build
    their mask from positions, no cache involved)."""
    model = loaded(name)
    ids = mx.array(np.random.default_rng(7).integers(0, 128, size=(1, 270)))
    expected = model(ids)
    cache = model.make_cache()
    got = mx.concatenate([model(ids[:, :250], cache=cache)] + [model(ids[:, t : t + 1], cache=cache)
                                                               for t in range(250, 270)], axis=1)
    assert_close(got, expected, f"{name}: 250 + 20 x 1 tokens")
    assert [c.offset for c in cache] == [270] * len(cache)


@pytest.mark.parametrize("name,kinds", [
    ("llama4_text", [(ChunkedKVCache, 8)] * 3 + [(KVCache, None)]),
    ("llama4_text_pattern", [(KVCache, None), (ChunkedKVCache, 5), (KVCache, None)]),
])
def test_cache_per_layer_kind(name, kinds, loaded):
    cache = loaded(name).make_cache()
    assert [(type(c), getattr(c, "window", None)) for c in cache] == kinds
    quantized = mlxmodels.make_cache(loaded(name), kv_bits=8)
    assert [type(c) for c in quantized] == [QuantizedKVCache if k is KVCache else k for k, _ in kinds]


# --- temperature tuning --------------------------------------------------------------------------

def test_query_temperature_follows_position():
    """The query at position p is scaled by 1 + attn_scale * log(1 + floor((p + 1) / floor_scale)),
    with p counted from the cache's offset."""
    attn = Attention(AttentionSpec(hidden_size=8, num_heads=2, num_kv_heads=1, head_dim=4, rope=None, scale=0.5,
                                   query_temperature=(4.0, 0.1)))
    q = mx.ones((1, 2, 6, 4))
    got = np.array(attn._temper(q, offset=9))[0, 0, :, 0]
    positions = np.arange(9, 15)
    assert np.allclose(got, 1 + 0.1 * np.log1p(np.floor((positions + 1) / 4)), rtol=1e-6)


@pytest.mark.parametrize("name", ["llama4_text", "llama4_text_pattern"])
def test_quantized_kv_cache_on_the_nope_layers(name, loaded, monkeypatch):
    """--kv-bits: the NoPE full-attention layers (tempered queries) read 8-bit keys and values through
    the quantized kernel; the chunked layers keep their float cache."""
    model = loaded(name)
    ids, _ = reference(name)

    def run():
        cache = mlxmodels.make_cache(model, kv_bits=8)
        return mx.concatenate([model(ids[:, :20], cache=cache)] + [model(ids[:, t : t + 1], cache=cache)
                                                                   for t in range(20, ids.shape[1])], axis=1)

    got = run()
    # Quantization is the only difference from float: 8-bit keys and values move these logits by
    # 8.0e-4 (llama4_text) and 1.6e-3 (llama4_text_pattern) of their scale (measured; 4 bits: 9.2e-3, 2.5e-2).
    assert_close(got, model(ids), f"{name} with an 8-bit KV cache", 5e-3)

    def attend_dequantized(self, q, k, v, mask, cache):
        k, v = (mx.dequantize(*t, group_size=cache.group_size, bits=cache.bits) for t in (k, v))
        return self._attend(q, k, v, mask)

    monkeypatch.setattr(Attention, "_attend_quantized", attend_dequantized)
    assert_close(got, run(), f"{name}: quantized kernel vs float attention on the dequantized cache")


# --- the MoE block -------------------------------------------------------------------------------

def numpy_llama4_moe(moe: SparseMoE, x: np.ndarray) -> np.ndarray:
    """transformers' Llama4TextMoe: sigmoid of the top-k router logits (0 for the others), every expert
    run on the tokens scaled by its score, summed, plus the shared expert."""
    def silu(t):
        return t / (1 + np.exp(-t))

    def glu(t, gate, up, down):
        return (silu(t @ gate.T) * (t @ up.T)) @ down.T

    logits = x @ np.array(moe.gate.weight).T
    top = np.argsort(-logits, axis=-1)[:, : moe.top_k]
    scores = np.zeros_like(logits)
    np.put_along_axis(scores, top, 1 / (1 + np.exp(-np.take_along_axis(logits, top, axis=-1))), axis=-1)
    e = moe.experts
    gate, up, down = (np.array(p.weight) for p in (e.gate_proj, e.up_proj, e.down_proj))
    out = sum(glu(x * scores[:, i : i + 1], gate[i], up[i], down[i]) for i in range(gate.shape[0]))
    s = moe.shared_expert
    return out + glu(x, np.array(s.gate_proj.weight), np.array(s.up_proj.weight), np.array(s.down_proj.weight))


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("tokens", [3, 2 * SORT_THRESHOLD + 5])  # unsorted (decode-sized) and sorted gathers
def test_moe_scales_expert_inputs_as_transformers(top_k, tokens):
    mx.random.seed(41)
    moe = SparseMoE(16, 24, 4, top_k, norm_topk_prob=False, shared_hidden_dims=24, scoring="sigmoid",
                    weight_inputs=True)
    x = mx.random.normal((tokens, 16))
    expected = numpy_llama4_moe(moe, np.array(x))
    assert_close(moe(x), expected, f"top-{top_k}, {tokens} tokens")
    # Weighting the outputs instead (the other families' form) computes something else here.
    moe.weight_inputs = False
    assert np.abs(np.array(moe(x)) - expected).max() > 1e-2 * np.abs(expected).max()


def test_router_ranks_saturated_logits():
    """Logits 30 and 20 both give sigmoid 1.0 in float32; transformers' top-k of the logits picks 30."""
    moe = SparseMoE(2, 4, 4, 1, norm_topk_prob=False, scoring="sigmoid", weight_inputs=True)
    moe.gate.weight = mx.array([[0.0, 20.0], [0.0, 30.0], [0.0, -1.0], [0.0, 0.0]])
    indices, weights = moe.route(mx.array([[0.0, 1.0]]))
    assert indices.tolist() == [[1]] and weights.tolist() == [[1.0]]


# --- checkpoint layouts --------------------------------------------------------------------------

def test_multimodal_checkpoint_loads_its_text_model(tmp_path, loaded):
    """A "llama4" (Llama4ForConditionalGeneration) directory: settings under text_config, the text
    model's tensors under `language_model.`, a vision tower beside it (dropped)."""
    from safetensors.numpy import load_file, save_file

    directory = tmp_path / "multimodal"
    shutil.copytree(FIXTURES / "llama4_text", directory)
    tensors = load_file(directory / "model.safetensors")
    tensors = {f"language_model.{k}": v for k, v in tensors.items()}
    tensors["vision_model.patch_embedding.linear.weight"] = np.zeros((4, 4), np.float32)
    tensors["multi_modal_projector.linear_1.weight"] = np.zeros((4, 4), np.float32)
    save_file(tensors, directory / "model.safetensors")
    text = fixture_config("llama4_text")
    config = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"], "text_config": text,
              "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 4}, "tie_word_embeddings": False}
    (directory / "config.json").write_text(json.dumps(config))
    ids, logits = reference("llama4_text")
    assert_close(mlxmodels.load_model(directory)(ids), logits, "multimodal layout", 1e-4)


def test_mlx_lm_style_quantized_router_is_dequantized(tmp_path):
    """mlx-lm's own conversions quantize the router like any linear layer (here with a per-module entry
    under mlx-lm's name): such a checkpoint loads with the router dequantized to float."""
    from mlxmodels.convert import ConvertOptions, convert

    out = tmp_path / "converted"
    convert(FIXTURES / "llama4_text", out, ConvertOptions(bits=8, dtype="float32"))
    ids, _ = reference("llama4_text")
    float_router = np.array(mlxmodels.load_model(out)(ids))  # evaluated before the file changes
    weights = mx.load(str(out / "model.safetensors"))
    router = "language_model.model.layers.1.feed_forward.router"
    assert f"{router}.scales" not in weights  # Orchard keeps routers in float
    w, scales, biases = mx.quantize(weights[f"{router}.weight"], group_size=32, bits=8)
    weights.update({f"{router}.weight": w, f"{router}.scales": scales, f"{router}.biases": biases})
    mx.eval(weights)  # read in full before the file is rewritten
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    config = json.loads((out / "config.json").read_text())
    config["quantization"][router] = config["quantization_config"][router] = {"group_size": 32, "bits": 8}
    (out / "config.json").write_text(json.dumps(config))
    model = mlxmodels.load_model(out)
    assert model.layers[1].mlp.gate.weight.dtype == mx.float32
    # An 8-bit router moves the logits by 9.0e-5 of their scale (measured); read with the default
    # group size of 64 instead of its own 32 it would not load at all.
    assert_close(model(ids), float_router, "quantized router vs float router", 1e-3)


# --- config reading ------------------------------------------------------------------------------

def test_both_dialects_read_alike(loaded):
    def settings(name):  # 4.x rope_scaling also names the type under "type"
        args = dict(vars(loaded(name).args))
        args["rope"] = {k: v for k, v in args["rope"].items() if k != "type"}
        return args

    assert settings("llama4_text") == settings("llama4_text_hf4")


def minimal_config(**changes) -> dict:
    config = {"model_type": "llama4_text", "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 8,
              "num_attention_heads": 16, "vocab_size": 128, **changes}
    return {k: v for k, v in config.items() if v != "absent"}


def test_defaults_follow_transformers():
    """Llama4TextConfig's defaults are Scout's: NoPE (and full attention) every 4th layer, chunked
    attention of 8192 on the others, every layer MoE with 16 experts and top-1, QK-norm, temperature
    tuning from 8192 positions, 8 KV heads of head_dim 128, rope_theta 5e5, untied."""
    args = build_model(minimal_config()).args
    assert args.rope_layers == [True, True, True, False] * 2
    assert args.chunked_layers == args.rope_layers and args.attention_chunk_size == 8192
    assert args.sparse_layers == [True] * 8
    assert (args.num_local_experts, args.num_experts_per_tok, args.intermediate_size_mlp) == (16, 1, 16384)
    assert (args.num_key_value_heads, args.head_dim, args.rope["rope_theta"]) == (8, 128, 500000.0)
    assert args.use_qk_norm and args.temperature_tuning and (args.floor_scale, args.attn_scale) == (8192.0, 0.1)
    assert not args.tie_word_embeddings and args.rms_norm_eps == 1e-5
    # Maverick's interleaving; an empty no_rope_layers (read as absent); explicit nulls; 4.51's numeric switch.
    args = build_model(minimal_config(interleave_moe_layer_step=2, no_rope_layers=[], head_dim=None,
                                      num_key_value_heads=None, attn_temperature_tuning=4)).args
    assert args.sparse_layers == [False, True] * 4 and args.rope_layers == [True, True, True, False] * 2
    assert (args.head_dim, args.num_key_value_heads, args.temperature_tuning) == (4, 16, True)
    # moe_layers overrides the step; layer_types overrides the NoPE-derived chunking.
    args = build_model(minimal_config(moe_layers=[0, 5], no_rope_layer_interval=2,
                                      layer_types=["full_attention"] * 8)).args
    assert args.sparse_layers == [i in (0, 5) for i in range(8)] and args.rope_layers == [True, False] * 4
    assert args.chunked_layers == [False] * 8 and args.attention_chunk_size is None
    assert all(type(c) is KVCache for c in build_model(minimal_config(layer_types=["full_attention"] * 8)).make_cache())


def test_attention_options_per_layer(loaded):
    """What each layer's attention gets: RoPE (pairs) + QK-norm + chunking, or NoPE + temperature."""
    for layer, (rope, nope_tempered) in zip(loaded("llama4_text").layers, [(True, False)] * 3 + [(False, True)]):
        attn = layer.self_attn
        assert (attn.rope is not None, attn.query_temperature is not None) == (rope, nope_tempered)
        assert (attn.qk_norm == "unit_rms") == rope and (attn.attention_chunk == 8) == rope
        assert attn.rope is None or attn.rope.traditional
    attn = loaded("llama4_text_pattern").layers[1].self_attn  # use_qk_norm false (Maverick)
    assert attn.qk_norm is None and attn.rope is not None and attn.attention_chunk == 5


MALFORMED = [
    ({"hidden_size": "absent"}, "hidden_size"),
    ({"intermediate_size": "absent"}, "intermediate_size"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"head_dim": 0}, "head_dim"),
    ({"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ({"num_experts_per_tok": 0}, "num_experts_per_tok"),
    ({"no_rope_layers": [1, 0]}, "no_rope_layers"),
    ({"no_rope_layers": [1, 1, 2, 0]}, "no_rope_layers"),
    ({"no_rope_layers": "absent", "no_rope_layer_interval": 0}, "no_rope_layer_interval"),
    ({"layer_types": ["chunked_attention"] * 3}, "layer_types"),
    ({"layer_types": ["chunked_attention", "sliding_attention"] * 2}, "layer_types"),
    ({"layer_types": "chunked"}, "layer_types"),
    ({"attention_chunk_size": None}, "attention_chunk_size"),
    ({"attention_chunk_size": 0}, "attention_chunk_size"),
    ({"attention_chunk_size": 8.5}, "attention_chunk_size"),
    ({"moe_layers": [1, 4]}, "moe_layers"),
    ({"moe_layers": "odd"}, "moe_layers"),
    ({"moe_layers": "absent", "interleave_moe_layer_step": 0}, "interleave_moe_layer_step"),
    ({"attn_temperature_tuning": "yes"}, "attn_temperature_tuning"),
    ({"floor_scale": 0}, "floor_scale"),
    ({"use_qk_norm": "yes"}, "use_qk_norm"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "factor"),
]


@pytest.mark.parametrize("changes,field", MALFORMED, ids=[f"{f}-{i}" for i, (_, f) in enumerate(MALFORMED)])
def test_malformed_config_names_the_field(changes, field):
    config = fixture_config("llama4_text")
    for key, value in changes.items():
        if value == "absent":
            config.pop(key, None)
        else:
            config[key] = value
    config["_source"] = "config.json"
    with pytest.raises(ConfigError) as e:
        build_model(config)
    message = str(e.value)
    assert "\n" not in message and field in message


# --- config against checkpoint -------------------------------------------------------------------

@pytest.mark.parametrize("changes,needles", [
    ({"moe_layers": [0, 3]}, ["checkpoint lacks weight 'model.layers.0.mlp."]),
    ({"num_hidden_layers": 5, "no_rope_layers": [1, 1, 1, 0, 1], "layer_types": None},
     ["checkpoint lacks weight 'model.layers.4."]),
    ({"num_local_experts": 8}, [".mlp.gate.weight' has shape (4, 32)", "implies (8, 32)"]),
    ({"intermediate_size_mlp": 32}, ["model.layers.0.mlp.down_proj.weight' has shape (32, 64)", "implies (32, 32)"]),
    ({"head_dim": 16}, [".self_attn.q_proj.weight' has shape (64, 32)", "implies (32, 32)"]),
])
def test_config_disagreeing_with_checkpoint_names_the_tensor(tmp_path, changes, needles):
    directory = tmp_path / "bad"
    shutil.copytree(FIXTURES / "llama4_text", directory)
    config = {k: v for k, v in {**fixture_config("llama4_text"), **changes}.items() if v is not None}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError) as e:
        mlxmodels.load_model(directory)
    message = str(e.value)
    assert "\n" not in message and str(directory) in message
    for needle in needles:
        assert needle in message, (needle, message)


# --- the command line ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,kv_bits", [(n, None) for n in FIXTURE_NAMES] + [("llama4_text", 8)])
def test_orchard_run(name, kv_bits, capsys):
    from app.main import main

    argv = ["run", "--model", str(FIXTURES / name), "--prompt", "hello there", "--temp", "0", "--max-tokens", "12"]
    code = main(argv + (["--kv-bits", str(kv_bits)] if kv_bits else []))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    # The char tokenizer maps ids 0-127 to ASCII: twelve greedy tokens are at most twelve characters
    # (a prompt of 11 plus 12 tokens crosses the chunk boundaries at 8 and 16).
    assert len(captured.out.rstrip("\n")) <= 12

