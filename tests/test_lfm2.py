"""LFM2 beyond logit parity (tests/test_parity.py runs the lfm2* fixtures against transformers).

- The gated short-convolution mixer: prefill (the whole chunk convolved at once) and decode (one
  step) against a plain numpy evaluation of transformers' formula (zero-padded depthwise conv), for
  kernels 3 and 4, with and without biases, at lengths shorter and longer than the window, with and
  without an incoming window.
- The hybrid cache: a KV cache per attention layer, a fixed-size conv window per conv layer
  (`SSMCache` with no scan state), no rewinding, snapshots for prefix reuse, a quantized KV cache.
- The SwiGLU width arithmetic; config errors name the field in one line; a config whose layer
  pattern or sizes disagree with the checkpoint fails naming the layer and the tensor; `orchard run`.

Tolerance: float32 on both sides, differing only in summation order; 1e-5 of the output scale is
~10x the rounding noise and far below what a shifted window or a missing gate causes.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES
from test_errors import assert_one_line_error, run_cli

import mlxmodels
from mlxmodels.cache import (
    KVCache,
    QuantizedKVCache,
    SSMCache,
    cache_state,
    can_trim_cache,
    copy_cache,
    trim_cache,
)
from mlxmodels.config import ConfigReader
from mlxmodels.errors import ConfigError, WeightsError
from mlxmodels.layers.short_conv import ShortConv
from mlxmodels.models import build_model
from mlxmodels.models.lfm2 import feed_forward_size

TIGHT = 1e-5
FIXTURE_NAMES = ["lfm2", "lfm2_hf4", "lfm2_bias"]


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


# --- the short-convolution mixer --------------------------------------------------------------

def numpy_short_conv(layer: ShortConv, x: mx.array) -> np.ndarray:
    """transformers' Lfm2ShortConv without a cache: B * x through a depthwise conv over the
    sequence padded with K - 1 zeros in front, gated by C."""
    B, C, xs = np.split(np.array(layer.in_proj(x)), 3, axis=-1)
    u = B * xs  # [batch, L, hidden]
    taps = np.array(layer.conv.weight)[:, :, 0]  # [hidden, K]
    K, L = taps.shape[1], u.shape[1]
    padded = np.concatenate([np.zeros((u.shape[0], K - 1, u.shape[2]), u.dtype), u], axis=1)
    y = sum(padded[:, k : k + L] * taps[:, k] for k in range(K))
    if "bias" in layer.conv:
        y = y + np.array(layer.conv.bias)
    return np.array(layer.out_proj(mx.array(C * y)))


@pytest.mark.parametrize("kernel,bias", [(3, False), (4, True)])
@pytest.mark.parametrize("length", [1, 2, 5, 17])  # below, at and past the K - 1 window
def test_short_conv_prefill_and_decode_match_the_reference(kernel, bias, length):
    mx.random.seed(kernel * 100 + length)
    layer = ShortConv(16, kernel, bias)
    layer.conv.weight = mx.random.normal(layer.conv.weight.shape)
    if bias:
        layer.conv.bias = mx.random.normal((16,))
    x = mx.random.normal((2, length, 16))
    expected = numpy_short_conv(layer, x)

    assert_close(layer(x), expected, f"no cache, {length} tokens")
    whole = SSMCache()
    assert_close(layer(x, whole), expected, f"one prefill of {length} tokens")
    steps = SSMCache()
    assert_close(mx.concatenate([layer(x[:, t : t + 1], steps) for t in range(length)], axis=1), expected,
                 f"{length} decode steps")
    # A prefill that starts from a carried window (split inside and beyond the window).
    split = length // 2
    carried = SSMCache()
    parts = [layer(x[:, :split], carried)] if split else []
    got = mx.concatenate(parts + [layer(x[:, split:], carried)], axis=1)
    assert_close(got, expected, f"prefill {split} + {length - split}")

    for cache in (whole, steps, carried):
        assert cache.offset == length and cache.ssm is None
        assert cache.conv.shape == (2, kernel - 1, 16)
    # The window is the last K - 1 values of B * x (zeros before the first token).
    B, _, xs = np.split(np.array(layer.in_proj(x)), 3, axis=-1)
    u = np.concatenate([np.zeros((2, kernel - 1, 16), np.float32), B * xs], axis=1)
    assert_close(whole.conv, u[:, -(kernel - 1):], "the cached window")
    assert_close(steps.conv, whole.conv, "the window after decode steps")


# --- the hybrid cache -------------------------------------------------------------------------

def test_cache_kinds_and_fixed_conv_window(loaded):
    model = loaded("lfm2")
    cache = model.make_cache()
    assert [type(c) for c in cache] == [SSMCache, KVCache]  # layer_types [conv, full_attention]
    assert [type(c) for c in loaded("lfm2_bias").make_cache()] == [KVCache, SSMCache]

    model(mx.array([[5] * 4]), cache=cache)
    window_bytes = 1 * (3 - 1) * 64 * 4  # batch x (K - 1) x hidden x float32, whatever the context
    kv_bytes = cache[1].nbytes
    assert cache[0].nbytes == window_bytes and cache[0].ssm is None
    model(mx.array([[7] * 300]), cache=cache)  # past the KV cache's first 256-token buffer
    assert cache[0].nbytes == window_bytes and cache[1].nbytes > kv_bytes
    assert cache_state(cache[:1]) == [cache[0].conv]
    assert cache[0].offset == cache[1].offset == 304 and cache[0].mask(3) is None

    # The KV layer could rewind, the conv window cannot: the model's cache as a whole does not.
    assert can_trim_cache(cache, 0) and not can_trim_cache(cache, 1)
    assert not trim_cache(cache, 1) and cache[0].offset == cache[1].offset == 304


@pytest.mark.parametrize("name", ["lfm2", "lfm2_bias"])
def test_snapshot_reuses_a_prefix(name, loaded):
    """What a chat does with a cache that cannot rewind: snapshot at the end of the shared prefix,
    continue two ways; the second continuation must not see the first."""
    model = loaded(name)
    ids = reference_ids(name)
    prefix, a, b = ids[:, :10], ids[:, 10:17], ids[:, 17:]
    cache = model.make_cache()
    model(mx.array(prefix), cache=cache)
    snapshot = copy_cache(cache)
    model(mx.array(a), cache=cache)
    got = model(mx.array(b), cache=copy_cache(snapshot))
    full = model(mx.array(np.concatenate([prefix, b], axis=1)))
    assert_close(got, full[:, 10:], f"{name} continuation from a snapshot")
    assert [c.offset for c in snapshot] == [10, 10]


def test_quantized_kv_cache_for_attention_layers_only(loaded):
    """--kv-bits swaps the attention layers' KV cache only; the conv window stays as it is."""
    model = loaded("lfm2_bias")  # head_dim 32: a quantization group fits a head
    ids = mx.array(reference_ids("lfm2_bias"))
    cache = mlxmodels.make_cache(model, kv_bits=8)
    assert [type(c) for c in cache] == [QuantizedKVCache, SSMCache]
    got = mx.concatenate([model(ids[:, :20], cache=cache)] + [model(ids[:, t : t + 1], cache=cache)
                                                              for t in range(20, ids.shape[1])], axis=1)
    expected = model(ids)
    # 8-bit keys and values (group 32) perturb the logits by 4.2e-3 of their scale (measured; 4 bits:
    # 7.6e-2). A misplaced position or a lost conv window moves them by > 10%.
    assert_close(got, expected, "8-bit KV cache", 2e-2)
    assert np.array_equal(np.array(got.argmax(-1)), np.array(expected.argmax(-1)))


def test_greedy_generation_through_the_hybrid_cache(loaded):
    """Chunked prefill + decode through both cache kinds picks, at each step, the argmax of a fresh
    full-sequence forward."""
    model = loaded("lfm2")
    prompt = [int(t) for t in reference_ids("lfm2")[0]]

    class Tok:  # ids in, ids out: enough for generate
        eos_token_ids = []

        class detokenizer:
            last_segment = ""
            reset = add_token = finalize = staticmethod(lambda *a: None)

    _, stats = mlxmodels.generate(model, Tok(), prompt, max_tokens=6, prefill_step=5)
    seq = list(prompt)
    for token in stats.tokens:
        assert token == int(mx.argmax(model(mx.array([seq]))[0, -1]).item())
        seq.append(token)
    assert len(stats.tokens) == 6


# --- config reading ---------------------------------------------------------------------------

@pytest.mark.parametrize("fields,expected", [
    ({"intermediate_size": 128, "block_ffn_dim_multiplier": 0.75, "block_multiple_of": 16}, 64),
    ({"intermediate_size": 12288, "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256}, 8192),
    ({"block_ff_dim": 6656, "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256}, 4608),  # 4437 up
    ({"intermediate_size": 128}, 256),  # defaults: multiplier 1.0, multiple of 256 (85 -> 256)
    ({"intermediate_size": 128, "block_ffn_dim_multiplier": None}, 85),  # null: no multiplier, no rounding
    ({"intermediate_size": 100, "block_auto_adjust_ff_dim": False, "block_multiple_of": 64}, 100),
    ({"intermediate_size": 999, "block_ff_dim": 96, "block_auto_adjust_ff_dim": False}, 96),  # older key wins
])
def test_feed_forward_size_follows_the_reference(fields, expected):
    """transformers' Lfm2MLP: int(2 x / 3); with a multiplier, int(m x) rounded up to the multiple."""
    assert feed_forward_size(ConfigReader(fields)) == expected


def test_older_config_keys_read_alike(loaded):
    new, old = loaded("lfm2").args, loaded("lfm2_hf4").args
    assert vars(new) == vars(old)
    assert new.layer_types == ["conv", "full_attention"] and new.rope["rope_theta"] == 1e6


def test_defaults_without_a_layer_pattern():
    """Neither `layer_types` nor `full_attn_idxs`: every layer attends, as in the reference."""
    config = json.loads((FIXTURES / "lfm2_hf4" / "config.json").read_text())
    del config["full_attn_idxs"]
    assert build_model(config).args.layer_types == ["full_attention"] * 2


MALFORMED = [
    ("lfm2", {"layer_types": ["conv"] * 3}, "layer_types"),
    ("lfm2", {"layer_types": ["conv", "mamba"]}, "layer_types"),
    ("lfm2", {"full_attn_idxs": [0]}, "full_attn_idxs"),  # disagrees with layer_types
    ("lfm2_hf4", {"full_attn_idxs": [2]}, "full_attn_idxs"),  # no such layer
    ("lfm2_hf4", {"full_attn_idxs": 1}, "full_attn_idxs"),
    ("lfm2", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("lfm2", {"conv_L_cache": 0}, "conv_L_cache"),
    ("lfm2", {"intermediate_size": None}, "intermediate_size"),
    ("lfm2_hf4", {"block_ff_dim": "big"}, "block_ff_dim"),
    ("lfm2", {"block_multiple_of": 0}, "block_multiple_of"),
    ("lfm2", {"block_ffn_dim_multiplier": "x"}, "block_ffn_dim_multiplier"),
    ("lfm2", {"intermediate_size": 1}, "intermediate_size"),  # int(2/3) = 0 wide
    ("lfm2", {"conv_bias": "no"}, "conv_bias"),
]


@pytest.mark.parametrize("name,changes,field", MALFORMED, ids=[f"{n}-{f}-{i}" for i, (n, _, f) in enumerate(MALFORMED)])
def test_malformed_config_names_the_field(name, changes, field):
    config = json.loads((FIXTURES / name / "config.json").read_text())
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


# --- config against checkpoint ----------------------------------------------------------------

@pytest.mark.parametrize("changes,needles", [
    # The pattern reversed: layer 0 should be attention but the checkpoint has its conv.
    ({"layer_types": ["full_attention", "conv"]}, ["model.layers.0.self_attn."]),
    ({"conv_L_cache": 4}, ["model.layers.0.conv.conv.weight", "(64, 3, 1)", "(64, 4, 1)"]),
    ({"block_ffn_dim_multiplier": 1.0}, [".feed_forward.", "(64, 64)", "(96, 64)"]),  # width 96
])
def test_config_disagreeing_with_checkpoint_names_layer_and_tensor(tmp_path, changes, needles):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "lfm2", bad)
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
    shutil.copytree(FIXTURES / "lfm2_hf4", bad)
    config = json.loads((bad / "config.json").read_text())
    config["full_attn_idxs"] = [5]
    (bad / "config.json").write_text(json.dumps(config))
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, "full_attn_idxs", "[5]", str(bad / "config.json"))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_orchard_run(name, capsys):
    from app.main import main

    code = main(["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    # The char tokenizer maps ids 0-127 to ASCII: five greedy tokens are at most five characters.
    assert len(captured.out.rstrip("\n")) <= 5
