"""Phi-3 and Gemma 2 beyond logit parity (tests/test_parity.py runs the phi3* and gemma2* fixtures
against transformers, phi3_longrope's cached decoding against transformers' own cached decoding).

- LongRoPE in the shared RoPE layer: both factor sets on both CPU paths (cos/sin tables and
  `mx.fast.rope`) against the definition, the switch by the length seen so far (not by position),
  the attention factor as transformers derives it; what that switch means for reusing a cache.
- The fused projections (`qkv_proj`, `gate_up_proj`) against the unfused layers they stand for.
- Caches: which kind each layer gets, bytes per token, a quantized KV cache under soft-capping.
- Config reading: both dialects alike, Phi-3's LongRoPE aliases and its top-level original length,
  Gemma 2's defaults (absent vs null soft-caps); malformed configs fail in one line naming the
  field; a config that disagrees with the checkpoint names the layer and the tensor; `orchard run`.

Tolerance: float32 on both sides of a comparison between two of our own paths, differing only in
summation order: 1e-5 of the output scale is ~10x the rounding noise and far below what a wrong
factor set (~5% of the scale here), a swapped fused half or a missing soft-cap cause.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES
from helpers import cpu_math_mode
from test_errors import assert_one_line_error, run_cli

import mlxmodels
from mlxmodels.cache import KVCache, QuantizedKVCache, RotatingKVCache, copy_cache
from mlxmodels.errors import ConfigError, WeightsError
from mlxmodels.layers.attention import Attention, AttentionSpec
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.rope import RoPE
from mlxmodels.models import build_model, phi3

TIGHT = 1e-5
FIXTURE_NAMES = ["phi3", "phi3_hf4", "phi3_longrope", "gemma2", "gemma2_hf4"]


def assert_close(ours, theirs, what: str, tolerance: float = TIGHT) -> None:
    ours, theirs = np.array(ours), np.array(theirs)
    scale = max(np.abs(theirs).max(), 1e-6)
    error = np.abs(ours - theirs).max()
    assert error <= tolerance * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def config_of(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


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


# --- LongRoPE -----------------------------------------------------------------------------------

SHORT = [1.0, 1.5, 2.0, 4.0]
LONG = [1.0, 3.0, 9.0, 27.0]
LONGROPE = {"rope_type": "longrope", "rope_theta": 10_000.0, "short_factor": SHORT, "long_factor": LONG,
            "original_max_position_embeddings": 16}


def numpy_longrope(x: np.ndarray, offset: int, factors: list, dims: int, magnitude: float) -> np.ndarray:
    """transformers' LongRoPE on the first `dims` features: inv_freq = 1 / (factor_i * base^(2i/dims))
    in float32, angle = position x inv_freq in float32, cos and sin times the attention factor."""
    base_periods = np.float32(10_000.0) ** (np.arange(0, dims, 2, dtype=np.float32) / dims)
    inv = 1.0 / (np.array(factors, np.float32) * base_periods)
    angles = np.arange(offset, offset + x.shape[-2], dtype=np.float32)[:, None] * inv.astype(np.float32)[None, :]
    cos, sin = np.cos(angles.astype(np.float64)) * magnitude, np.sin(angles.astype(np.float64)) * magnitude
    x = x.astype(np.float64)
    x1, x2, rest = x[..., : dims // 2], x[..., dims // 2 : dims], x[..., dims:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


@pytest.mark.parametrize("math_path", ["cpu-math", "mlx-ops"])
@pytest.mark.parametrize("offset,length,factors", [
    (0, 16, SHORT),   # ends exactly at the original length: still short
    (0, 17, LONG),    # one past it: the long factors for every position of the call
    (10, 6, SHORT),   # a cached continuation that stays within it
    (10, 7, LONG),    # ... and one that crosses it
    (300, 1, LONG),   # a decode step far past it (the CPU tables grow past their first 256 rows)
])
def test_longrope_picks_factors_by_the_length_seen(math_path, offset, length, factors):
    """Partial rotary (8 of 12 features) so the untouched tail is checked too; magnitude from
    max_position_embeddings 64 / original 16: sqrt(1 + ln 4 / ln 16)."""
    rope = RoPE(8, LONGROPE, 64)
    magnitude = math.sqrt(1 + math.log(4) / math.log(16))
    assert rope.magnitude == pytest.approx(magnitude, rel=1e-12)
    mx.random.seed(offset + length)
    x = mx.random.normal((1, 2, length, 12))
    with cpu_math_mode("auto" if math_path == "cpu-math" else "mlx"):
        got = rope(x, offset=offset)
    expected = numpy_longrope(np.array(x), offset, factors, 8, magnitude)
    # MLX's own op computes angles its own way: ~1e-5 apart at position 300 (see test_cpu_math).
    assert np.abs(np.array(got) - expected).max() < 1e-5 * max(1, offset / 30)


@pytest.mark.parametrize("extra,max_positions,expected", [
    ({}, 64, math.sqrt(1 + math.log(4) / math.log(16))),              # factor = 64 / 16
    ({"factor": 2.0}, 64, math.sqrt(1 + math.log(2) / math.log(16))),  # an explicit factor wins
    ({"attention_factor": 0.7}, 64, 0.7),                              # an explicit attention factor wins
    ({}, 16, 1.0),                                                     # no extension: factor 1
])
def test_longrope_attention_factor(extra, max_positions, expected):
    assert RoPE(8, dict(LONGROPE, **extra), max_positions).magnitude == pytest.approx(expected, rel=1e-12)


def test_longrope_factor_lists_are_checked():
    with pytest.raises(ConfigError, match="long_factor"):
        RoPE(8, dict(LONGROPE, long_factor=[1.0, 2.0]), 64)


def test_cache_reuse_across_the_original_length(loaded):
    """phi3_longrope (original 16): a cache is as good as a fresh prefill when the reused prefix
    already passed the original length, or when everything stays within it; one that crossed it
    in a later call holds keys rotated with the short factors, as transformers' cache does, so it
    differs from a fresh prefill (which rotates everything with the long ones)."""
    model = loaded("phi3_longrope")
    ids = mx.array(reference_ids("phi3_longrope"))

    def continued(prefix: int, end: int):
        cache = model.make_cache()
        model(ids[:, :prefix], cache=cache)
        return model(ids[:, prefix:end], cache=copy_cache(cache))

    assert_close(continued(18, 24), model(ids)[:, 18:], "prefix past the original length")
    assert_close(continued(10, 16), model(ids[:, :16])[:, 10:], "everything within it")
    moved = np.abs(np.array(continued(10, 24)) - np.array(model(ids)[:, 10:])).max()
    assert moved > 1e-2 * np.abs(np.array(model(ids))).max(), "crossing in a later call keeps short-rotated keys"


# --- fused projections --------------------------------------------------------------------------

@pytest.mark.parametrize("math_path", ["auto", "mlx"])
def test_fused_qkv_is_q_then_k_then_v(math_path):
    spec = dict(hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8, rope=None, scale=8**-0.5)
    fused, plain = Attention(AttentionSpec(**spec, fused_qkv=True)), Attention(AttentionSpec(**spec))
    assert "q_proj" not in fused and fused.qkv_proj.weight.shape == (32 + 2 * 16, 32)
    q, k, v = mx.split(fused.qkv_proj.weight, [32, 48])
    plain.update({"q_proj": {"weight": q}, "k_proj": {"weight": k}, "v_proj": {"weight": v},
                  "o_proj": {"weight": fused.o_proj.weight}})
    x = mx.random.normal((2, 5, 32), key=mx.random.key(1))
    with cpu_math_mode(math_path):
        assert_close(fused(x), plain(x), "fused vs separate q/k/v projections")


@pytest.mark.parametrize("math_path", ["auto", "mlx"])
def test_fused_gate_up_is_gate_then_up(math_path):
    fused, plain = GatedMLP(16, 24, "silu", fused=True), GatedMLP(16, 24, "silu")
    assert "gate_proj" not in fused and fused.gate_up_proj.weight.shape == (48, 16)
    gate, up = mx.split(fused.gate_up_proj.weight, 2)
    plain.update({"gate_proj": {"weight": gate}, "up_proj": {"weight": up},
                  "down_proj": {"weight": fused.down_proj.weight}})
    x = mx.random.normal((2, 5, 16), key=mx.random.key(2))
    with cpu_math_mode(math_path):
        assert_close(fused(x), plain(x), "fused vs separate gate/up projections")


# --- caches -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kinds,quantized", [
    ("phi3", [RotatingKVCache] * 2, [RotatingKVCache] * 2),  # window 8 on every layer: stays float
    ("phi3_longrope", [KVCache] * 2, [QuantizedKVCache] * 2),
    ("gemma2", [RotatingKVCache, KVCache, RotatingKVCache], [RotatingKVCache, QuantizedKVCache, RotatingKVCache]),
])
def test_cache_kinds_and_sizes(loaded, name, kinds, quantized):
    model = loaded(name)
    cache = model.make_cache()
    assert [type(c) for c in cache] == kinds
    assert [type(c) for c in mlxmodels.make_cache(model, kv_bits=8)] == quantized
    per_token = 2 * model.args.num_key_value_heads * model.args.head_dim * 4  # keys + values, float32
    for _ in range(7):
        model(mx.array([[5] * 100]), cache=cache)
    for c in cache:
        _, heads, capacity, dims = c.keys.shape
        assert c.offset == 700 and 2 * heads * dims * 4 == per_token
        if isinstance(c, RotatingKVCache):  # bounded: window - 1 + step of history, a chunk, a step of room
            assert c.window == 8 and capacity <= (8 - 1 + c.step) + 100 + c.step
        else:
            assert capacity >= 700


def test_quantized_kv_cache_with_soft_capping(loaded):
    """gemma2's global layer soft-caps its scores and gets the 8-bit cache: the quantized branch
    dequantizes for the soft-capped attention. Measured: 8-bit keys and values move the logits by
    4.1e-3 of their scale; the same branch without the soft-cap by 0.19."""
    model = loaded("gemma2")
    ids = mx.array(reference_ids("gemma2"))
    expected = model(ids)
    cache = mlxmodels.make_cache(model, kv_bits=8)
    got = mx.concatenate([model(ids[:, :20], cache=cache)] + [model(ids[:, t : t + 1], cache=cache)
                                                              for t in range(20, ids.shape[1])], axis=1)
    assert_close(got, expected, "8-bit KV cache", 2e-2)
    assert np.array_equal(np.array(got.argmax(-1)), np.array(expected.argmax(-1)))


# --- config reading -----------------------------------------------------------------------------

@pytest.mark.parametrize("new,old", [("phi3", "phi3_hf4"), ("gemma2", "gemma2_hf4")])
def test_both_dialects_read_alike(loaded, new, old):
    assert vars(loaded(new).args) == vars(loaded(old).args)


def test_phi3_settings(loaded):
    args = loaded("phi3").args
    assert (args.head_dim, args.rotary_dims, args.sliding_window) == (16, 12, 8)
    assert args.rope["rope_type"] == "longrope" and args.rope["original_max_position_embeddings"] == 64
    rope = loaded("phi3").layers[0].self_attn.rope
    assert rope.magnitude == pytest.approx(math.sqrt(1 + math.log(2) / math.log(64)))
    assert loaded("phi3").tie_embeddings and not loaded("phi3_longrope").tie_embeddings


@pytest.mark.parametrize("alias", ["su", "yarn", "longrope"])
def test_phi3_longrope_aliases(alias):
    """transformers' Phi3Config renames the older "su" (and "yarn") to "longrope"."""
    config = config_of("phi3_hf4")
    config["rope_scaling"]["type"] = alias
    assert build_model(config).args.rope["rope_type"] == "longrope"


def test_phi3_original_length_comes_from_the_top_level():
    """Phi3Config copies its own `original_max_position_embeddings` (default 4096) over the value in
    the RoPE settings, as transformers 5.23 does."""
    config = config_of("phi3")
    config["rope_parameters"]["original_max_position_embeddings"] = 8
    assert build_model(config).args.rope["original_max_position_embeddings"] == 64
    del config["original_max_position_embeddings"]
    assert build_model(config).args.rope["original_max_position_embeddings"] == 4096


def test_phi3_without_scaling():
    config = config_of("phi3_hf4")
    config["rope_scaling"] = None
    del config["partial_rotary_factor"]
    args = build_model(config).args
    assert args.rope["rope_type"] == "default" and args.rotary_dims == args.head_dim == 16


def test_phi3_window_beyond_the_context_is_dropped():
    """Phi-4-mini's sliding_window 262144 exceeds its 131072 positions: full-attention caches, which
    --kv-bits can quantize; a window inside the context stays."""
    config = config_of("phi3")
    config["sliding_window"] = config["max_position_embeddings"]
    model = build_model(config)
    assert model.args.sliding_window is None and [type(c) for c in model.make_cache()] == [KVCache] * 2
    config["sliding_window"] = config["max_position_embeddings"] - 1
    assert build_model(config).args.sliding_window == 127


def test_phi3_config_for_mlx_lm():
    """mlx-lm 0.32's phi3 reads the partial rotary factor at the top level and requires the
    scaling's "type" key."""
    written = phi3.mlx_lm_config(config_of("phi3"))
    assert written["partial_rotary_factor"] == 0.75
    assert written["rope_parameters"]["type"] == "longrope"
    assert "partial_rotary_factor" not in written["rope_parameters"]


def test_gemma2_defaults_and_null_soft_caps(loaded):
    """Gemma2Config's defaults where a field is absent (soft-caps 50 / 30, query scalar 256, layers
    alternating sliding first, rope_theta 1e4); an explicit null soft-cap means none."""
    config = config_of("gemma2_hf4")
    for key in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "rope_theta"):
        del config[key]
    config["num_hidden_layers"] = 4
    args = build_model(config).args
    caps = (args.attn_logit_softcapping, args.final_logit_softcapping)
    assert caps == (50.0, 30.0) and args.query_pre_attn_scalar == 256.0
    assert args.layer_types == ["sliding_attention", "full_attention"] * 2
    assert args.rope_global["rope_theta"] == args.rope_local["rope_theta"] == 10_000.0
    config.update(attn_logit_softcapping=None, final_logit_softcapping=None)
    model = build_model(config)
    assert model.args.attn_logit_softcapping is None and model.final_softcap is None
    assert "q_norm" not in loaded("gemma2").layers[0].self_attn  # Gemma 3's q/k norms are not Gemma 2's


MALFORMED = [
    ("phi3", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("phi3", {"intermediate_size": None}, "intermediate_size"),
    ("phi3", {"sliding_window": 0}, "sliding_window"),
    ("phi3", {"rope_parameters.long_factor": [1.0, 2.0]}, "rope_parameters.long_factor"),
    ("phi3", {"rope_parameters.short_factor": "1.0"}, "rope_parameters.short_factor"),
    ("phi3", {"rope_parameters.attention_factor": -1.0}, "rope_parameters.attention_factor"),
    ("phi3", {"rope_parameters.partial_rotary_factor": 1.5}, "partial_rotary_factor"),
    ("phi3", {"rope_parameters.partial_rotary_factor": 0.1}, "partial_rotary_factor"),  # 1 rotated feature
    ("phi3", {"rope_parameters.rope_type": "linear"}, "rope_parameters"),
    ("phi3_hf4", {"rope_scaling.long_factor": None}, "rope_scaling.long_factor"),
    ("phi3_hf4", {"partial_rotary_factor": "most"}, "partial_rotary_factor"),
    ("phi3_hf4", {"original_max_position_embeddings": "4k"}, "original_max_position_embeddings"),
    ("phi3_hf4", {"original_max_position_embeddings": 0}, "original_max_position_embeddings"),
    ("gemma2", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("gemma2", {"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ("gemma2", {"layer_types": ["sliding_attention", "mamba", "full_attention"]}, "layer_types"),
    ("gemma2", {"attn_logit_softcapping": "high"}, "attn_logit_softcapping"),
    ("gemma2_hf4", {"sliding_window_pattern": 0}, "sliding_window_pattern"),
    ("gemma2_hf4", {"query_pre_attn_scalar": "x"}, "query_pre_attn_scalar"),
]


@pytest.mark.parametrize("name,changes,field", MALFORMED, ids=[f"{n}-{f}-{i}" for i, (n, _, f) in enumerate(MALFORMED)])
def test_malformed_config_names_the_field(name, changes, field):
    config = config_of(name)
    for key, value in changes.items():
        target, _, leaf = key.rpartition(".")
        holder = config[target] if target else config
        if value is None:
            holder.pop(leaf, None)
        else:
            holder[leaf] = value
    config["_source"] = "config.json"
    with pytest.raises(ConfigError) as e:
        build_model(config)
    message = str(e.value)
    assert "\n" not in message and field in message and message.startswith("config.json: "), message


# --- config against checkpoint ------------------------------------------------------------------

@pytest.mark.parametrize("name,changes,needles", [
    # GQA 4/2 -> 4/4: the fused projection's rows no longer add up.
    ("phi3", {"num_key_value_heads": 4},
     [r"model\.layers\.\d\.self_attn\.qkv_proj\.weight", r"\(128, 64\)", r"\(192, 64\)"]),
    # The MLP's width: the fused gate_up_proj (2 x 32 rows) or down_proj (32 columns), whichever comes first.
    ("phi3_longrope", {"intermediate_size": 48},
     [r"model\.layers\.\d\.mlp\.(gate_up_proj|down_proj)\.weight", r"\((64, 64|64, 32)\)", r"\((96, 64|64, 48)\)"]),
    ("phi3", {"tie_word_embeddings": False}, [r"lm_head\.weight"]),
    ("gemma2", {"num_hidden_layers": 2, "layer_types": ["sliding_attention", "full_attention"]},
     [r"model\.layers\.2\."]),
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
        assert re.search(needle, message), (needle, message)


def test_bad_factor_list_on_the_command_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "phi3_hf4", bad)
    config = json.loads((bad / "config.json").read_text())
    config["rope_scaling"]["short_factor"] = [1.0] * 8  # 6 rotated pairs
    (bad / "config.json").write_text(json.dumps(config))
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, "rope_scaling.short_factor", "6", str(bad / "config.json"))


@pytest.mark.parametrize("kv_bits", [None, 8])
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_orchard_run(name, kv_bits, capsys):
    from app.main import main

    extra = ["--kv-bits", str(kv_bits)] if kv_bits else []
    code = main(["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    # The char tokenizer maps ids 0-127 to ASCII: five greedy tokens are at most five characters.
    assert len(captured.out.rstrip("\n")) <= 5
