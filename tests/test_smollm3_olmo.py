"""SmolLM3, OLMo 2 and OLMo 3 beyond logit parity (tests/test_parity.py runs their fixtures against
transformers).

- NoPE: a layer without RoPE sees no positions, so with NoPE everywhere and full attention the last
  token's logits do not depend on the order of the tokens before it; with SmolLM3's RoPE layers they do.
- The full-width q/k norm (and OLMoE's q/k/v clipping) of the shared attention against a plain numpy
  evaluation of transformers' Olmo2Attention.
- Caches: which layer gets which cache, a sliding window's fixed size, decoding past the rotating
  cache's buffer, a quantized KV cache on the full-attention layers (NoPE and full-width norms alike).
- Config reading: the defaults transformers derives (NoPE interval, sliding NoPE layers, OLMo 3's
  every-4th full layer), the two dialects reading alike, one-line errors naming the field, a config
  that disagrees with the checkpoint naming the tensor, `orchard run` (also with --kv-bits 8).

Tolerance: float32 on both sides of each comparison, differing only in summation order; 1e-5 of the
output scale is ~10x that rounding noise and far below what a position leak or a wrong norm width causes.
"""

from __future__ import annotations

import json
import math
import shutil

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES

import mlxmodels
from mlxmodels.cache import KVCache, QuantizedKVCache, RotatingKVCache
from mlxmodels.errors import ConfigError, WeightsError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.models import build_model

TIGHT = 1e-5
FIXTURE_NAMES = ["smollm3", "smollm3_hf4", "smollm3_bias", "olmo2", "olmo2_hf4", "olmo2_gqa", "olmo3", "olmo3_hf4"]


def assert_close(ours, theirs, what: str, tolerance: float = TIGHT) -> None:
    ours, theirs = np.array(ours), np.array(theirs)
    scale = max(np.abs(theirs).max(), 1e-6)
    error = np.abs(ours - theirs).max()
    assert error <= tolerance * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def reference_ids(name: str) -> np.ndarray:
    return np.load(FIXTURES / name / "reference.npz")["input_ids"]


def copy_with_config(tmp_path, name: str, **changes):
    """The fixture's weights under an edited config.json (a value of None removes the key)."""
    directory = tmp_path / name
    shutil.copytree(FIXTURES / name, directory)
    config = fixture_config(name)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def loaded():
    models = {}

    def get(name):
        if name not in models:
            models[name] = mlxmodels.load_model(FIXTURES / name)
        return models[name]

    return get


# --- NoPE ----------------------------------------------------------------------------------------

def test_nope_layers_see_no_positions(loaded):
    """The last query of a NoPE layer attends to the earlier tokens as a set: reversing their order
    leaves its output unchanged. A RoPE layer's output changes."""
    model = loaded("smollm3")  # no_rope_layers [1, 0, 1, 0]
    assert [layer.self_attn.rope is not None for layer in model.layers] == [True, False, True, False]
    x = mx.random.normal((1, 12, 32), key=mx.random.key(3))
    reordered = mx.concatenate([x[:, :-1][:, ::-1], x[:, -1:]], axis=1)
    nope, rope = model.layers[3].self_attn, model.layers[0].self_attn  # both full attention
    assert_close(nope(reordered)[:, -1], nope(x)[:, -1], "NoPE layer, earlier tokens reversed")
    moved = np.abs(np.array(rope(reordered)[:, -1] - rope(x)[:, -1])).max()
    assert moved > 1e-2 * np.abs(np.array(rope(x)[:, -1])).max()


# --- the full-width q/k norm ---------------------------------------------------------------------

def numpy_olmo_attention(attn: Attention, x: np.ndarray, clip: float | None) -> np.ndarray:
    """transformers' Olmo2Attention (OLMoE's when clipping) without positions: RMSNorm over the whole
    q and k projections (eps 1e-5), then heads, GQA, causal softmax attention, o_proj."""
    def linear(layer, t):
        return t @ np.array(layer.weight).T

    def rms(t, weight):
        return t / np.sqrt((t * t).mean(-1, keepdims=True) + 1e-5) * np.array(weight)

    q = rms(linear(attn.q_proj, x), attn.q_norm.weight)
    k = rms(linear(attn.k_proj, x), attn.k_norm.weight)
    v = linear(attn.v_proj, x)
    if clip is not None:
        q, k, v = (np.clip(t, -clip, clip) for t in (q, k, v))
    B, L, _ = x.shape
    H, KV, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = q.reshape(B, L, H, D).transpose(0, 2, 1, 3)
    k = np.repeat(k.reshape(B, L, KV, D).transpose(0, 2, 1, 3), H // KV, axis=1)
    v = np.repeat(v.reshape(B, L, KV, D).transpose(0, 2, 1, 3), H // KV, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D)
    scores = np.where(np.tril(np.ones((L, L), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(B, L, H * D)
    return linear(attn.o_proj, out)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_full_width_qk_norm_matches_the_reference(clip):
    mx.random.seed(15)
    spec = AttentionSpec(hidden_size=24, num_heads=4, num_kv_heads=2, head_dim=8, rope=None, scale=8**-0.5,
                         qk_norm="full_width", clip_qkv=clip, norm_eps=1e-5)
    attn = Attention(spec)
    assert attn.q_norm.weight.shape == (32,) and attn.k_norm.weight.shape == (16,)  # all heads at once
    attn.q_norm.weight = 1 + 0.5 * mx.random.normal((32,))
    attn.k_norm.weight = 1 + 0.5 * mx.random.normal((16,))
    x = mx.random.normal((2, 7, 24))
    expected = numpy_olmo_attention(attn, np.array(x), clip)
    assert_close(attn(x), expected, f"full-width q/k norm, clip {clip}")
    cache = KVCache()
    steps = mx.concatenate([attn(x[:, :3], cache)] + [attn(x[:, t : t + 1], cache) for t in range(3, 7)], axis=1)
    assert_close(steps, expected, "the same through a KV cache")


# --- caches --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kinds", [
    ("smollm3", [(KVCache, None), (RotatingKVCache, 8), (RotatingKVCache, 8), (KVCache, None)]),
    ("smollm3_bias", [(KVCache, None)] * 3),
    ("olmo2", [(KVCache, None)] * 2),
    ("olmo3", [(RotatingKVCache, 5), (KVCache, None), (RotatingKVCache, 5)]),
])
def test_cache_per_layer_kind(name, kinds, loaded):
    cache = loaded(name).make_cache()
    assert [(type(c), getattr(c, "window", None)) for c in cache] == kinds


@pytest.mark.parametrize("name", ["smollm3", "olmo3"])
def test_decoding_past_the_rotating_buffer(name, loaded):
    """Prefill 250 tokens, then decode 20: the sliding layers' buffers compact past 256 entries while
    the full layers keep growing; logits as in one full-sequence forward."""
    model = loaded(name)
    ids = mx.array(np.random.default_rng(7).integers(0, 128, size=(1, 270)))
    expected = model(ids)
    cache = model.make_cache()
    got = mx.concatenate([model(ids[:, :250], cache=cache)] + [model(ids[:, t : t + 1], cache=cache)
                                                               for t in range(250, 270)], axis=1)
    assert_close(got, expected, f"{name}: 250 + 20 x 1 tokens")
    assert [c.offset for c in cache] == [270] * len(cache)


@pytest.mark.parametrize("name", ["smollm3", "olmo2", "olmo3"])
def test_quantized_kv_cache_on_full_attention_layers(name, loaded, monkeypatch):
    """--kv-bits: full-attention layers (NoPE ones and full-width-normed ones included) read 8-bit keys
    and values through the quantized kernel; sliding layers keep their float rotating cache."""
    model = loaded(name)
    ids = mx.array(reference_ids(name))

    def run():
        cache = mlxmodels.make_cache(model, kv_bits=8)
        assert [type(c) for c in cache] == [QuantizedKVCache if type(c) is KVCache else type(c)
                                            for c in model.make_cache()]
        return mx.concatenate([model(ids[:, :20], cache=cache)] + [model(ids[:, t : t + 1], cache=cache)
                                                                   for t in range(20, ids.shape[1])], axis=1)

    got = run()
    # Quantization is the only difference from float: these logits move by 1.2e-2 (olmo2), 4.0e-3
    # (olmo3), 2.1e-3 (smollm3) of their scale (measured; 4 bits: 0.15, 0.075, 0.053).
    assert_close(got, model(ids), f"{name} with an 8-bit KV cache", 3e-2)

    # The same run with plain float attention over the dequantized cache: equal to rounding.
    def attend_dequantized(self, q, k, v, mask, cache):
        k, v = (mx.dequantize(*t, group_size=cache.group_size, bits=cache.bits) for t in (k, v))
        return self._attend(q, k, v, mask)

    monkeypatch.setattr(Attention, "_attend_quantized", attend_dequantized)
    assert_close(got, run(), f"{name}: quantized kernel vs float attention on the dequantized cache")


# --- config reading ------------------------------------------------------------------------------

@pytest.mark.parametrize("v5,v4", [("smollm3", "smollm3_hf4"), ("olmo2", "olmo2_hf4"), ("olmo3", "olmo3_hf4")])
def test_both_dialects_read_alike(v5, v4, loaded):
    def settings(name):  # 4.x rope_scaling also names the type under "type"
        args = dict(vars(loaded(name).args))
        args["rope"] = {k: v for k, v in args["rope"].items() if k != "type"}
        return args

    assert settings(v5) == settings(v4)


def test_olmo3_rope_per_layer_kind(loaded):
    args = loaded("olmo3_hf4").args  # 4.x: top-level rope_scaling belongs to the full layers
    assert args.rope["rope_type"] == "yarn" and args.rope["factor"] == 4.0
    assert args.sliding_rope == {"rope_type": "default", "rope_theta": 500_000.0}
    assert args.layer_windows == [5, None, 5]
    # A 5.x config whose sliding layers have their own base, as Orchard's converter writes it in 4.x.
    config = dict(fixture_config("olmo3_hf4"), rope_local_base_freq=10_000.0)
    assert build_model(config).args.sliding_rope == {"rope_type": "default", "rope_theta": 10_000.0}


def smollm3_config(**changes) -> dict:
    config = {"model_type": "smollm3", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 8,
              "num_attention_heads": 8, "vocab_size": 128, **changes}
    return {k: v for k, v in config.items() if v is not None}


def test_smollm3_defaults_follow_transformers():
    """SmolLM3Config: NoPE every 4th layer; 4 KV heads; tied; rope_theta 2e6; no windows."""
    args = build_model(smollm3_config()).args
    assert args.rope_layers == [True, True, True, False] * 2
    assert args.layer_windows == [None] * 8
    assert (args.num_key_value_heads, args.tie_word_embeddings, args.rope["rope_theta"]) == (4, True, 2e6)
    # use_sliding_window + sliding_window, no layer_types: the NoPE layers slide.
    args = build_model(smollm3_config(no_rope_layer_interval=3, use_sliding_window=True, sliding_window=16)).args
    assert args.rope_layers == [True, True, False] * 2 + [True, True]
    assert args.layer_windows == [None, None, 16, None, None, 16, None, None]
    # A window without use_sliding_window is not used; a longer no_rope_layers list is read from its start.
    args = build_model(smollm3_config(sliding_window=16, no_rope_layers=[0] + [1] * 9)).args
    assert args.layer_windows == [None] * 8 and args.rope_layers == [False] + [True] * 7


def test_olmo_defaults_follow_transformers():
    """Olmo2Config / Olmo3Config: eps 1e-5, untied; OLMo 3 slides on 3 layers of 4 over 4096 tokens
    with rope_theta 5e5 on both kinds."""
    base = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 8, "num_attention_heads": 2,
            "vocab_size": 128}
    olmo2 = build_model({"model_type": "olmo2", **base}).args
    assert (olmo2.rms_norm_eps, olmo2.tie_word_embeddings, olmo2.layer_windows) == (1e-5, False, [None] * 8)
    olmo3 = build_model({"model_type": "olmo3", **base}).args
    assert olmo3.layer_windows == [4096, 4096, 4096, None] * 2
    assert olmo3.rope["rope_theta"] == olmo3.sliding_rope["rope_theta"] == 500_000.0
    # Olmo2Config knows no sliding window: a stray key changes nothing.
    assert build_model({"model_type": "olmo2", "sliding_window": 4, **base}).args.layer_windows == [None] * 8


MALFORMED = [
    ("smollm3", {"no_rope_layers": [1, 0]}, "no_rope_layers"),
    ("smollm3", {"no_rope_layers": [1, 0, 2, 1]}, "no_rope_layers"),
    ("smollm3", {"no_rope_layers": "every 4th"}, "no_rope_layers"),
    ("smollm3", {"no_rope_layers": None, "no_rope_layer_interval": 0}, "no_rope_layer_interval"),
    ("smollm3", {"layer_types": ["full_attention"] * 3}, "layer_types"),
    ("smollm3", {"layer_types": ["full_attention", "chunked_attention"] * 2}, "layer_types"),
    ("smollm3", {"sliding_window": None}, "sliding_window"),
    ("smollm3", {"layer_types": None, "use_sliding_window": "yes"}, "use_sliding_window"),
    ("smollm3", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("olmo2", {"hidden_size": None}, "hidden_size"),
    ("olmo2", {"rms_norm_eps": "small"}, "rms_norm_eps"),
    ("olmo2", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("olmo3", {"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ("olmo3", {"layer_types": ["sliding_attention", "full_attention", "linear_attention"]}, "layer_types"),
    ("olmo3", {"layer_types": "sliding"}, "layer_types"),
    ("olmo3", {"sliding_window": 0}, "sliding_window"),
    ("olmo3", {"sliding_window": 5.5}, "sliding_window"),
]


@pytest.mark.parametrize("name,changes,field", MALFORMED, ids=[f"{n}-{f}-{i}" for i, (n, _, f) in enumerate(MALFORMED)])
def test_malformed_config_names_the_field(name, changes, field):
    config = fixture_config(name)
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


def test_olmo3_null_window_with_sliding_layers():
    """An explicit null sliding_window (transformers' mask builder refuses it too) names the field."""
    config = dict(fixture_config("olmo3"), sliding_window=None, _source="config.json")
    with pytest.raises(ConfigError, match="'sliding_window'"):
        build_model(config)


# --- config against checkpoint -------------------------------------------------------------------

@pytest.mark.parametrize("name,changes,needles", [
    ("smollm3", {"attention_bias": True}, ["checkpoint lacks weight 'model.layers.0.self_attn.q_proj.bias'"]),
    ("olmo2", {"num_key_value_heads": 1}, [".self_attn.k_proj.weight' has shape (64, 64)", "implies (32, 64)"]),
    ("olmo3", {"head_dim": 16}, [".self_attn.q_proj.weight' has shape (128, 32)", "implies (64, 32)"]),
    ("olmo3", {"num_hidden_layers": 4, "layer_types": ["sliding_attention", "full_attention"] * 2},
     ["checkpoint lacks weight 'model.layers.3."]),
])
def test_config_disagreeing_with_checkpoint_names_the_tensor(tmp_path, name, changes, needles):
    bad = copy_with_config(tmp_path, name, **changes)
    with pytest.raises(WeightsError) as e:
        mlxmodels.load_model(bad)
    message = str(e.value)
    assert "\n" not in message and str(bad) in message
    for needle in needles:
        assert needle in message, (needle, message)


# --- the command line ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,kv_bits", [(n, None) for n in FIXTURE_NAMES] + [("smollm3", 8), ("olmo2", 8), ("olmo3", 8)])
def test_orchard_run(name, kv_bits, capsys):
    from app.main import main

    argv = ["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5"]
    code = main(argv + (["--kv-bits", str(kv_bits)] if kv_bits else []))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    # The char tokenizer maps ids 0-127 to ASCII: five greedy tokens are at most five characters.
    assert len(captured.out.rstrip("\n")) <= 5
