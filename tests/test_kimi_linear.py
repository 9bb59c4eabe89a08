"""Kimi Linear beyond logit parity (tests/test_parity.py compares every kimi_linear* fixture with
transformers, full sequence and cached decoding).

- The KDA mixer: its chunked prefill (chunks of 64) against its own token-by-token decode, at lengths
  that do and do not divide the chunk, with and without a state carried in from an earlier prefill.
- The MLA layer: decode in the latent space (the kv_b_proj expansion absorbed into the query)
  against the expanded prefill, with plain or low-rank q, with and without RoPE, float or 4-bit kv_b_proj.
- The caches: `LatentKVCache` stores kv_lora_rank + qk_rope_head_dim values per token and layer,
  rewinds and snapshots; the KDA layers' `SSMCache` keeps a fixed size; prefix reuse by snapshot.
- Config errors name the field; checkpoints that disagree with the config name the tensor.
- An mlx-lm-made 4-bit checkpoint (mlx_lm.convert's layout) loads to mlx-lm's logits; `orchard run` works.

Tolerance: 1e-5 of the output scale between two of our own float32 paths. They compute the same sums
in a different order (chunked matrix products vs a recurrence, absorbed vs expanded products); the
differences seen are ~1e-7 relative, while a wrong decay, mask, window or head layout is O(1).
"""

from __future__ import annotations

import json
import math
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import FIXTURES
from mlx.utils import tree_flatten, tree_unflatten
from test_errors import assert_one_line_error, run_cli

import mlxmodels
from mlxmodels.cache import LatentKVCache, SSMCache, can_trim_cache, copy_cache, trim_cache
from mlxmodels.convert import ConvertOptions, convert
from mlxmodels.errors import ConfigError, WeightsError
from mlxmodels.export import save_model_dir
from mlxmodels.layers.kimi_delta import KimiDeltaAttention
from mlxmodels.layers.mla import MLASpec, MultiHeadLatentAttention
from mlxmodels.layers.rope import RoPE
from mlxmodels.models import build_model

TIGHT = 1e-5
FIXTURE_NAMES = ["kimi_linear", "kimi_linear_hf4", "kimi_linear_qlora"]


def assert_close(ours, theirs, what: str, tolerance: float = TIGHT) -> None:
    ours, theirs = np.array(ours), np.array(theirs)
    scale = max(np.abs(theirs).max(), 1e-6)
    error = np.abs(ours - theirs).max()
    assert error <= tolerance * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Weights under which mistakes show; KDA's decay parameters drawn as transformers initialises
    them (A_log = log U(1, 16), dt_bias = softplus^-1 of U(1e-3, 1e-1)): slow and fast channels."""
    mx.random.seed(seed)
    params = []
    for name, p in tree_flatten(module.parameters()):
        if name.endswith("A_log"):
            value = mx.log(mx.random.uniform(1.0, 16.0, p.shape))
        elif name.endswith("dt_bias"):
            dt = mx.exp(mx.random.uniform(math.log(1e-3), math.log(1e-1), p.shape))
            value = dt + mx.log(-mx.expm1(-dt))
        elif "norm" in name:
            value = 1.0 + 0.1 * mx.random.normal(p.shape)
        elif "conv" in name:
            value = 0.5 * mx.random.normal(p.shape)
        elif p.ndim == 1:
            value = 0.1 * mx.random.normal(p.shape)
        else:
            value = mx.random.normal(p.shape) * (0.5 / math.sqrt(p.shape[-1]))
        params.append((name, value))
    module.update(tree_unflatten(params))
    return module


@pytest.fixture(scope="module")
def loaded():
    models = {}

    def get(name):
        if name not in models:
            models[name] = mlxmodels.load_model(FIXTURES / name)
        return models[name]

    return get


def reference_ids(name: str) -> np.ndarray:
    return np.load(FIXTURES / name / "reference.npz")["input_ids"]


# --- the KDA mixer --------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [37, 64, 150])
@pytest.mark.parametrize("prefix", [0, 21], ids=["fresh", "with-state"])
def test_kda_chunked_prefill_matches_its_decode(length, prefix):
    """`prefix` tokens first (a state and conv window carried into the prefill), then `length` tokens
    in one prefill (chunks of 64: 37 stays in one, 64 fills one, 150 crosses two boundaries), against
    every token decoded one at a time from the start."""
    layer = randomise(KimiDeltaAttention(hidden=32, heads=2, head_dim=16, conv_kernel=4, eps=1e-5), seed=length)
    x = mx.random.normal((2, prefix + length, 32), key=mx.random.key(prefix + length))

    chunked = SSMCache()
    if prefix:
        layer(x[:, :prefix], chunked)
    out = layer(x[:, prefix:], chunked)

    stepped = SSMCache()
    steps = [layer(x[:, t : t + 1], stepped) for t in range(prefix + length)]
    assert_close(out, mx.concatenate(steps[prefix:], axis=1), f"KDA output, {prefix} + {length} tokens")
    assert_close(chunked.ssm, stepped.ssm, "final recurrent state")
    # Projected inputs: a product of all the rows against one per token, which a BLAS may round
    # differently by row count (seen: 2-5e-7 of ~2 on an AMD EPYC), so not exactly.
    assert_close(chunked.conv, stepped.conv, "conv window")
    assert chunked.offset == stepped.offset == prefix + length
    assert chunked.ssm.dtype == mx.float32 and chunked.ssm.shape == (2, 2, 16, 16)
    assert chunked.conv.shape == (2, 3, 3 * 32)  # the q, k and v windows side by side


# --- the MLA layer --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "q_lora_rank,use_rope,quantized",
    [(None, False, False), (16, True, False), (None, True, True)],
    ids=["plain-q", "low-rank-q-rope", "4-bit-kv_b"],
)
def test_mla_absorbed_decode_matches_expanded_prefill(q_lora_rank, use_rope, quantized):
    rope = RoPE(8, {"rope_type": "default", "rope_theta": 10000.0}, 256) if use_rope else None
    spec = MLASpec(hidden_size=64, num_heads=3, kv_lora_rank=64, qk_nope_head_dim=16, qk_rope_head_dim=8,
                   v_head_dim=12, scale=24**-0.5, q_lora_rank=q_lora_rank, rope=rope, bias=q_lora_rank is not None)
    layer = randomise(MultiHeadLatentAttention(spec), seed=3)
    if quantized:  # kv_b_proj's input is the 64-wide latent: one quantization group
        nn.quantize(layer, group_size=64, bits=4, class_predicate=lambda path, _: path == "kv_b_proj")
        assert isinstance(layer.kv_b_proj, nn.QuantizedLinear)
    x = mx.random.normal((2, 30, 64), key=mx.random.key(4))
    full = layer(x)

    cache = LatentKVCache()
    parts = [layer(x[:, :20], cache)] + [layer(x[:, t : t + 1], cache) for t in range(20, 30)]
    assert_close(mx.concatenate(parts, axis=1), full, "prefill then absorbed decode")
    assert cache.offset == 30


def test_latent_cache_rewinds_and_snapshots():
    spec = MLASpec(hidden_size=32, num_heads=2, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                   v_head_dim=8, scale=12**-0.5)
    layer = randomise(MultiHeadLatentAttention(spec), seed=5)
    x = mx.random.normal((1, 16, 32), key=mx.random.key(6))
    other = mx.random.normal((1, 4, 32), key=mx.random.key(7))

    cache = LatentKVCache()
    layer(x[:, :12], cache)
    snapshot = cache.copy()
    assert cache.can_trim(12) and not cache.can_trim(13)
    assert cache.trim(4) == 4 and cache.offset == 8
    got = mx.concatenate([layer(other[:, i : i + 1], cache) for i in range(4)], axis=1)
    expected = layer(mx.concatenate([x[:, :8], other], axis=1))[:, 8:]
    assert_close(got, expected, "decoding after a rewind")
    # The snapshot is unaffected by the rewind and by what was written after it.
    assert snapshot.offset == 12
    assert_close(layer(x[:, 12:], snapshot), layer(x)[:, 12:], "continuing from the snapshot")


# --- the model's caches -------------------------------------------------------------------------------

def test_cache_kinds_follow_the_layer_pattern(loaded):
    kinds = {name: [type(c).__name__ for c in loaded(name).make_cache()] for name in FIXTURE_NAMES}
    assert kinds == {
        "kimi_linear": ["SSMCache", "LatentKVCache"],
        "kimi_linear_hf4": ["SSMCache", "LatentKVCache"],  # the same pattern from linear_attn_config
        "kimi_linear_qlora": ["LatentKVCache", "SSMCache"],
    }


def test_cache_bytes(loaded):
    """MLA: kv_lora_rank + qk_rope_head_dim values per token and layer (16 + 8 here, float32), where
    expanded keys and values would take heads x (24 + 16). KDA: a fixed conv window and state."""
    model = loaded("kimi_linear")
    config = json.loads((FIXTURES / "kimi_linear" / "config.json").read_text())
    cache = model.make_cache()
    model(mx.array([[5] * 3]), cache=cache)
    ssm_bytes = cache[0].nbytes
    # Window [B, K - 1, 3 H D] and state [B, H, D, D], float32.
    heads, dim = config["linear_num_heads"], config["linear_head_dim"]
    assert ssm_bytes == 4 * ((config["linear_conv_kernel_dim"] - 1) * 3 * heads * dim + heads * dim * dim)

    tokens = LatentKVCache.step  # the buffers grow a step at a time: now exactly full
    model(mx.array([[7] * (tokens - 3)]), cache=cache)
    mla_layers = sum(isinstance(c, LatentKVCache) for c in cache)
    per_token = mla_layers * (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * 4
    assert sum(c.nbytes for c in cache if isinstance(c, LatentKVCache)) == tokens * per_token
    assert cache[0].nbytes == ssm_bytes  # the KDA state does not grow with the context


def test_prefix_reuse_by_snapshot(loaded):
    """What a chat does: the KDA state cannot rewind, so the shared prefix is snapshotted."""
    model = loaded("kimi_linear")
    ids = reference_ids("kimi_linear")
    prefix, a, b = ids[:, :40], ids[:, 40:50], ids[:, 50:]
    cache = model.make_cache()
    model(mx.array(prefix), cache=cache)
    assert can_trim_cache(cache, 0) and not can_trim_cache(cache, 1) and not trim_cache(cache, 1)
    snapshot = copy_cache(cache)
    model(mx.array(a), cache=cache)  # must not disturb the snapshot
    got = model(mx.array(b), cache=copy_cache(snapshot))
    full = model(mx.array(np.concatenate([prefix, b], axis=1)))
    assert_close(got, full[:, 40:], "continuation from a snapshot")


# --- config and checkpoint errors ----------------------------------------------------------------

MALFORMED = [
    ("kimi_linear", {"qk_head_dim": 30}, "qk_head_dim"),
    ("kimi_linear", {"num_key_value_heads": 1}, "num_key_value_heads"),
    ("kimi_linear", {"kv_lora_rank": None}, "kv_lora_rank"),
    ("kimi_linear", {"q_lora_rank": 0}, "q_lora_rank"),
    ("kimi_linear", {"topk_group": 3}, "topk_group"),
    ("kimi_linear", {"num_expert_group": 3}, "num_expert_group"),
    ("kimi_linear", {"num_experts_per_token": 3}, "num_experts_per_token"),  # 2 groups, best 1: 2 experts
    ("kimi_linear", {"layer_types": ["linear_attention"]}, "layer_types"),
    ("kimi_linear", {"layer_types": ["linear_attention", "sliding_attention"]}, "layer_types"),
    ("kimi_linear", {"mlp_layer_types": ["dense", "moe"]}, "mlp_layer_types"),
    ("kimi_linear", {"linear_head_dim": None}, "linear_head_dim"),
    ("kimi_linear_hf4", {"linear_attn_config.kda_layers": [1, 3]}, "linear_attn_config.kda_layers"),
    ("kimi_linear_hf4", {"linear_attn_config.kda_layers": []}, "kda_layers"),  # layer 1 in neither list
    ("kimi_linear_hf4", {"linear_attn_config.num_heads": "two"}, "linear_attn_config.num_heads"),
    ("kimi_linear_hf4", {"mla_use_nope": False}, "mla_use_nope"),
    ("kimi_linear_hf4", {"moe_router_activation_func": "softmax"}, "moe_router_activation_func"),
]


@pytest.mark.parametrize("name,changes,field", MALFORMED, ids=[f"{n}-{f}-{i}" for i, (n, _, f) in enumerate(MALFORMED)])
def test_malformed_config_names_the_field(name, changes, field):
    config = json.loads((FIXTURES / name / "config.json").read_text())
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


def _copy_with(tmp_path, name: str, config_changes: dict | None = None, tensor_changes: dict | None = None):
    bad = tmp_path / f"bad-{name}"
    shutil.copytree(FIXTURES / name, bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(config_changes or {})
    (bad / "config.json").write_text(json.dumps(config))
    if tensor_changes:
        weights = dict(mx.load(str(bad / "model.safetensors")))
        weights.update(tensor_changes)
        mx.save_safetensors(str(bad / "model.safetensors"), weights, metadata={"format": "pt"})
    return bad


def test_malformed_config_on_the_command_line(tmp_path, capsys):
    bad = _copy_with(tmp_path, "kimi_linear", {"topk_group": 5})
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, "topk_group", "5", str(bad / "config.json"))


def test_router_bias_of_the_wrong_length_names_the_tensor(tmp_path, capsys):
    bias = "model.layers.1.block_sparse_moe.gate.e_score_correction_bias"  # as the checkpoint names it
    bad = _copy_with(tmp_path, "kimi_linear", tensor_changes={bias: mx.zeros((5,))})
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, "model.layers.1.mlp.gate.e_score_correction_bias", "(5,)", "(4,)")


@pytest.mark.parametrize(
    "changes,needles",
    [
        # Layer kinds swapped against the weights: layer 0 is now MLA and its tensors are missing.
        ({"layer_types": ["full_attention", "linear_attention"]}, ["model.layers.0.self_attn.", "lacks"]),
        # KDA state sizes changed at the same width (4 heads of 8 instead of 2 of 16).
        ({"linear_num_heads": 4, "linear_head_dim": 8}, ["model.layers.0.self_attn.", "shape"]),
        # The MoE moved to layer 0: its experts are not where the config puts them.
        ({"mlp_layer_types": ["sparse", "dense"]}, ["model.layers.0.mlp.", "lacks"]),
    ],
    ids=["layer-pattern", "kda-sizes", "moe-layers"],
)
def test_checkpoint_disagreeing_with_the_config_names_layer_and_tensor(tmp_path, changes, needles):
    bad = _copy_with(tmp_path, "kimi_linear", changes)
    with pytest.raises(WeightsError) as e:
        mlxmodels.load_model(bad)
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in needles), message


# --- other checkpoint layouts, and the CLI ---------------------------------------------------------

def test_mlx_lm_converted_checkpoint_loads_to_mlx_lm_logits(tmp_path):
    """A checkpoint in mlx_lm.convert's 4-bit layout: kv_b_proj split into a transposed `embed_q` and
    `unembed_out` (both quantized), 8-bit routers, quantized KDA gate projections, `switch_mlp`,
    `q_conv.conv`, `mlp.e_score_correction_bias`. Orchard dequantizes what it keeps in float and
    joins kv_b_proj back: the same numbers as mlx-lm's (atol as in test_convert: 1e-4)."""
    from mlx_lm import convert as mlx_lm_convert
    from mlx_lm import load as mlx_lm_load

    config = json.loads((FIXTURES / "kimi_linear" / "config.json").read_text())
    config.update(kv_lora_rank=64, qk_nope_head_dim=64, qk_head_dim=72)  # mlx-lm quantizes along both
    model = randomise(build_model(config), seed=8)
    save_model_dir(tmp_path / "float", config, dict(tree_flatten(model.parameters())))
    for file in ("tokenizer.json", "tokenizer_config.json"):  # mlx_lm.convert insists on a tokenizer
        shutil.copy(FIXTURES / "kimi_linear" / file, tmp_path / "float" / file)
    convert(tmp_path / "float", tmp_path / "mlx-names", ConvertOptions(dequantize=True, dtype="float32"))
    mlx_lm_convert(hf_path=str(tmp_path / "mlx-names"), mlx_path=str(tmp_path / "mlx-lm-4bit"), quantize=True,
                   q_bits=4, dtype="float32")
    written = mx.load(str(tmp_path / "mlx-lm-4bit" / "model.safetensors"))
    for name in ("layers.1.self_attn.embed_q.scales", "layers.1.mlp.gate.scales", "layers.0.self_attn.f_a_proj.scales"):
        assert f"model.{name}" in written

    ids = mx.array(reference_ids("kimi_linear"))
    theirs_model, _ = mlx_lm_load(str(tmp_path / "mlx-lm-4bit"))
    theirs_model.set_dtype(mx.float32)
    ours = mlxmodels.load_model(tmp_path / "mlx-lm-4bit")
    np.testing.assert_allclose(np.array(ours(ids)), np.array(theirs_model(ids)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["kimi_linear", "kimi_linear_qlora"])
def test_orchard_run(name, capsys):
    from app.main import main

    code = main(["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    assert len(captured.out.rstrip("\n")) <= 5  # the char tokenizer: at most one character per token
