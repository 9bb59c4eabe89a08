"""DeepSeek-V2 / V3 (Kimi K2, Moonlight) and GLM-4.5 beyond logit parity (tests/test_parity.py compares
every deepseek* and glm4_moe* fixture with transformers, full sequence and cached decoding).

- MLA: decode in the latent space (kv_b_proj absorbed into the query) against the expanded form, on
  every MLA fixture; the `--kv-bits` latent cache (`QuantizedLatentKVCache`): its packed decode
  against the same attention on the dequantized rows, its bytes, rewinding, and its effect on logits.
- The caches: kinds per family, and the latent cache's bytes per token.
- Routing: DeepSeek-V2's group-limited greedy against transformers' algorithm; the layer pattern
  (`first_k_dense_replace`, `moe_layer_freq`).
- Multi-token prediction: the blocks load into `model.mtp`, run with the right shapes, chain, never
  run in plain generation, survive conversion; checkpoints without them load without them.
- Config errors name the field; checkpoints that disagree with the config name the tensor; an
  mlx-lm-made 4-bit DeepSeek-V3 checkpoint loads to mlx-lm's logits; `orchard run` works.

Tolerance: 1e-5 of the output scale between two of our own float32 paths (absorbed vs expanded
products, quantized matmuls vs the same products on dequantized rows): they differ only in summation
order (~1e-7 relative seen), while a wrong scale, rope layout or head split is O(1).
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
from mlxmodels.cache import (KVCache, LatentKVCache, QuantizedKVCache, QuantizedLatentKVCache, cache_nbytes,
                             copy_cache)
from mlxmodels.convert import ConvertOptions, convert
from mlxmodels.errors import ConfigError, WeightsError
from mlxmodels.export import save_model_dir
from mlxmodels.layers.mla import MLASpec, MultiHeadLatentAttention
from mlxmodels.layers.moe import SparseMoE
from mlxmodels.layers.rope import RoPE
from mlxmodels.models import build_model

TIGHT = 1e-5
MLA_FIXTURES = ["deepseek_v2", "deepseek_v2_group", "deepseek_v2_hf4", "deepseek_v3", "deepseek_v3_hf4",
                "deepseek_v3_mtp"]
GLM_FIXTURES = ["glm4_moe", "glm4_moe_hf4"]
MTP_FIXTURES = ["deepseek_v3_mtp", "glm4_moe", "glm4_moe_hf4"]


def assert_close(ours, theirs, what: str, tolerance: float = TIGHT) -> None:
    ours, theirs = np.array(ours), np.array(theirs)
    scale = max(np.abs(theirs).max(), 1e-6)
    error = np.abs(ours - theirs).max()
    assert error <= tolerance * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def randomise(module: nn.Module, seed: int) -> nn.Module:
    mx.random.seed(seed)
    params = []
    for name, p in tree_flatten(module.parameters()):
        if "norm" in name:
            value = 1.0 + 0.1 * mx.random.normal(p.shape)
        elif p.ndim == 1:
            value = 0.1 * mx.random.normal(p.shape)
        else:
            value = mx.random.normal(p.shape) * (0.5 / math.sqrt(p.shape[-1]))
        params.append((name, value))
    module.update(tree_unflatten(params))
    return module


def read_config(name: str) -> dict:
    config = json.loads((FIXTURES / name / "config.json").read_text())
    config["_source"] = "config.json"
    return config


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


# --- MLA: absorbed decode, and the quantized latent cache ------------------------------------------

@pytest.mark.parametrize("name", MLA_FIXTURES)
def test_absorbed_decode_matches_the_expanded_form(loaded, name):
    """Every position decoded one token at a time (L == 1: the absorbed form) against one full pass
    (the expanded form), and a prefill followed by absorbed steps."""
    model = loaded(name)
    ids = mx.array(reference_ids(name))
    expanded = model(ids)
    cache = model.make_cache()
    absorbed = mx.concatenate([model(ids[:, t : t + 1], cache=cache) for t in range(ids.shape[1])], axis=1)
    assert_close(absorbed, expanded, f"{name}: token-by-token absorbed decode")
    cache = model.make_cache()
    mixed = [model(ids[:, :10], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(10, ids.shape[1])]
    assert_close(mx.concatenate(mixed, axis=1), expanded, f"{name}: prefill then absorbed decode")


def mla_layer(kv_lora_rank: int = 56, rope_dims: int = 8, heads: int = 3) -> MultiHeadLatentAttention:
    params = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}
    spec = MLASpec(hidden_size=64, num_heads=heads, kv_lora_rank=kv_lora_rank, qk_nope_head_dim=16,
                   qk_rope_head_dim=rope_dims, v_head_dim=12, scale=24**-0.5 * 1.2, q_lora_rank=16,
                   rope=RoPE(rope_dims, params, 64, traditional=True), float_latent_projections=True)
    return randomise(MultiHeadLatentAttention(spec), seed=kv_lora_rank)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_latent_decode_reads_the_packed_rows_exactly(bits):
    """The decode over a QuantizedLatentKVCache (two quantized matmuls on the packed [latent | rope
    key] rows) against the float absorbed decode on the same rows dequantized: only summation order
    differs. And the prefill path (dequantized rows, expanded) against the float layer on them."""
    layer = mla_layer()
    x = mx.random.normal((2, 21, 64), key=mx.random.key(1))
    cache = QuantizedLatentKVCache(bits)
    layer(x[:, :20], cache)
    q_latent = mx.random.normal((2, 3, 1, 16), key=mx.random.key(2))
    q_rope = mx.random.normal((2, 3, 1, 8), key=mx.random.key(3))
    rows = tuple(a[..., : cache.offset, :] for a in cache.rows)
    latents, rope_keys = cache.dequantized(rows, mx.float32, 56)
    assert latents.shape == (2, 1, 20, 56) and rope_keys.shape == (2, 1, 20, 8)
    packed = layer._attend_absorbed_quantized(q_latent, q_rope, rows, cache)
    plain = layer._attend_absorbed(q_latent, q_rope, latents, rope_keys)
    assert_close(packed, plain, f"{bits}-bit packed decode vs dequantized rows")


def test_quantized_latent_cache_bytes_rewind_and_logits(loaded):
    """8 bits, a 32-wide row (latent 24 + rope 8) in one group of 32: 32 packed bytes plus a float32
    scale and bias, 40 bytes per token and layer where the float cache takes 128. Rewinding and
    snapshots work as for the float cache; the logits move, but by < 5% of their scale (affine 8-bit
    groups keep each value within half a step: range / 255 / 2)."""
    model = loaded("deepseek_v3")
    ids = mx.array(reference_ids("deepseek_v3"))
    plain = mlxmodels.make_cache(model)
    quantized = mlxmodels.make_cache(model, kv_bits=8)
    assert [type(c) for c in quantized] == [QuantizedLatentKVCache] * 2
    expected = model(ids, cache=plain)
    got = model(ids[:, :20], cache=quantized)
    got = mx.concatenate([got] + [model(ids[:, t : t + 1], cache=quantized) for t in range(20, 24)], axis=1)
    scale, error = np.abs(np.array(expected)).max(), np.abs(np.array(got - expected)).max()
    assert 0 < error < 0.05 * scale, f"8-bit latents moved the logits by {error:.3g} (scale {scale:.3g})"

    capacity = QuantizedLatentKVCache.step
    assert cache_nbytes(quantized) == 2 * capacity * (32 + 8)
    assert cache_nbytes(plain) == 2 * capacity * 32 * 4

    snapshot = copy_cache(quantized)
    assert all(c.trim(4) == 4 for c in quantized)
    tail = mx.concatenate([model(ids[:, t : t + 1], cache=quantized) for t in range(20, 24)], axis=1)
    assert_close(tail, got[:, 20:], "decoding again after a rewind")
    assert [c.offset for c in snapshot] == [24, 24]


def test_quantized_latent_cache_needs_a_row_divisible_by_32(capsys):
    layer = mla_layer(kv_lora_rank=20)  # 20 + 8 = 28
    cache = QuantizedLatentKVCache(8)
    with pytest.raises(Exception) as e:
        layer(mx.random.normal((1, 3, 64)), cache)
    assert str(e.value) == ("a quantized latent KV cache needs kv_lora_rank + qk_rope_head_dim divisible by 32; "
                            "this model's is 28")


# --- caches ------------------------------------------------------------------------------------------

def test_cache_kinds_and_kv_bits(loaded):
    for name in MLA_FIXTURES:
        assert [type(c) for c in loaded(name).make_cache()] == [LatentKVCache] * 2, name
    for name in GLM_FIXTURES:
        model = loaded(name)
        assert [type(c) for c in model.make_cache()] == [KVCache] * 2
        assert [type(c) for c in mlxmodels.make_cache(model, kv_bits=8)] == [QuantizedKVCache] * 2


@pytest.mark.parametrize("name", ["deepseek_v2", "deepseek_v3_mtp"])
def test_latent_cache_bytes_per_token(loaded, name):
    """layers x (kv_lora_rank + qk_rope_head_dim) x 4 bytes (float32) per token: what a DeepSeek
    model caches instead of heads x (q/k head + v head) keys and values per layer."""
    model, config = loaded(name), read_config(name)
    cache = model.make_cache()
    tokens = LatentKVCache.step  # the buffers grow a step at a time: exactly full
    mx.eval(model(mx.array([[5] * tokens]), cache=cache))
    per_token = config["num_hidden_layers"] * (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * 4
    assert cache_nbytes(cache) == tokens * per_token
    expanded = config["num_hidden_layers"] * config["num_attention_heads"] * (
        config["qk_nope_head_dim"] + config["qk_rope_head_dim"] + config["v_head_dim"]) * 4
    assert per_token < expanded


# --- routing and layer pattern ----------------------------------------------------------------------

def group_limited_greedy_reference(logits: np.ndarray, groups: int, best: int, k: int):
    """transformers' DeepseekV2TopkRouter, "group_limited_greedy", in numpy."""
    scores = np.exp(logits - logits.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    N, E = scores.shape
    group_scores = scores.reshape(N, groups, E // groups).max(-1)
    kept = np.argsort(-group_scores, axis=-1)[:, :best]
    mask = np.zeros((N, groups), bool)
    np.put_along_axis(mask, kept, True, axis=-1)
    masked = np.where(np.repeat(mask, E // groups, axis=-1), scores, 0.0)
    indices = np.argsort(-masked, axis=-1)[:, :k]
    return indices, np.take_along_axis(scores, indices, axis=-1)


def test_group_limited_greedy_routing_matches_the_reference():
    moe = SparseMoE(16, 8, 12, 3, norm_topk_prob=False, n_group=4, topk_group=2, routed_scaling_factor=16.0)
    moe.gate.weight = mx.random.normal((12, 16), key=mx.random.key(0))
    x = mx.random.normal((200, 16), key=mx.random.key(1))
    indices, weights = moe.route(x)
    logits = np.array(x @ moe.gate.weight.T)
    expected_indices, expected_weights = group_limited_greedy_reference(logits, 4, 2, 3)
    order = np.argsort(np.array(indices), axis=-1)
    assert np.array_equal(np.take_along_axis(np.array(indices), order, -1), np.sort(expected_indices, axis=-1))
    got_weights = np.take_along_axis(np.array(weights), order, -1)
    want = np.take_along_axis(expected_weights, np.argsort(expected_indices, axis=-1), -1) * 16.0
    np.testing.assert_allclose(got_weights, want, rtol=1e-6)
    # Tokens whose k best experts overall lie outside their best groups exist: the limit matters.
    plain = np.argsort(-logits, axis=-1)[:, :3]
    assert (np.sort(plain, -1) != np.sort(expected_indices, -1)).any()


def test_layer_pattern_from_first_k_dense_replace_and_moe_layer_freq():
    config = read_config("deepseek_v2")
    config.update(num_hidden_layers=6, first_k_dense_replace=1, moe_layer_freq=2)
    model = build_model(config)
    assert [isinstance(layer.mlp, SparseMoE) for layer in model.layers] == [False, False, True, False, True, False]
    config = read_config("glm4_moe")
    config.update(num_hidden_layers=4, first_k_dense_replace=2)
    model = build_model(config)
    assert [isinstance(layer.mlp, SparseMoE) for layer in model.layers] == [False, False, True, True]
    assert isinstance(model.mtp[0].mlp, SparseMoE)  # block 4: past the dense layers too


# --- multi-token prediction ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", MTP_FIXTURES)
def test_mtp_blocks_load_and_run(loaded, name):
    """The checkpoint's model.layers.2.* land in model.mtp[0] (its copies of the embedding and LM head
    dropped: the main model's serve); the block maps (hidden [B, L, D], next ids [B, L]) to logits
    [B, L, vocab] and its own hidden states, with its own cache, and a second call continues it."""
    model, config = loaded(name), read_config(name)
    assert len(model.mtp) == 1
    names = {k for k, _ in tree_flatten(model.mtp[0].parameters())}
    for part in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                 "input_layernorm.weight", "mlp.gate.e_score_correction_bias", "mlp.experts.gate_proj.weight"):
        assert part in names, part
    assert not any(n.startswith(("embed_tokens", "shared_head.head")) for n in names)
    stored = mx.load(str(FIXTURES / name / "model.safetensors"))
    np.testing.assert_array_equal(np.array(model.mtp[0].eh_proj.weight),
                                  np.array(stored["model.layers.2.eh_proj.weight"]))

    ids = mx.array(reference_ids(name))
    hidden = model.model(ids)  # the final-normed states the LM head reads
    cache = model.mtp[0].make_cache()
    logits, h = model.mtp[0](hidden[:, :-1], ids[:, 1:], cache)
    D, V = config["hidden_size"], config["vocab_size"]
    assert logits.shape == (1, 23, V) and h.shape == (1, 23, D) and cache.offset == 23
    assert np.isfinite(np.array(logits)).all()
    # Incremental use (what speculative decoding does) gives the full pass's outputs.
    cache = model.mtp[0].make_cache()
    first, _ = model.mtp[0](hidden[:, :10], ids[:, 1:11], cache)
    rest = [model.mtp[0](hidden[:, t : t + 1], ids[:, t + 1 : t + 2], cache)[0] for t in range(10, 23)]
    assert_close(mx.concatenate([first, *rest], axis=1), logits, f"{name}: MTP block with its cache")


def test_plain_generation_does_not_run_the_mtp_blocks(loaded):
    model = loaded("glm4_moe")
    ids = mx.array(reference_ids("glm4_moe"))
    before = np.array(model(ids))
    saved = model.mtp[0].eh_proj.weight
    model.mtp[0].eh_proj.weight = mx.full(saved.shape, mx.nan)
    try:
        np.testing.assert_array_equal(np.array(model(ids)), before)
    finally:
        model.mtp[0].eh_proj.weight = saved


def test_checkpoint_without_mtp_tensors_loads_without_mtp_blocks(tmp_path):
    """transformers and mlx-lm drop the MTP tensors but keep num_nextn_predict_layers in the config."""
    bad = copy_with(tmp_path, "glm4_moe", drop_prefix="model.layers.2.")
    model = mlxmodels.load_model(bad)
    assert model.mtp == [] and model.args.num_nextn_predict_layers == 1
    partial = copy_with(tmp_path, "glm4_moe", drop_prefix="model.layers.2.eh_proj.")
    with pytest.raises(WeightsError) as e:
        mlxmodels.load_model(partial)
    assert "mtp.0.eh_proj.weight" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["deepseek_v3_mtp", "glm4_moe"])
def test_conversion_keeps_the_mtp_blocks(tmp_path, loaded, name):
    """Quantized and written where the checkpoints keep them (model.layers.2.*, where mlx-lm's loaders
    drop them); the converted model's MTP block computes what the source's computes, quantized alike."""
    out = tmp_path / "q8"
    convert(FIXTURES / name, out, ConvertOptions(bits=8, dtype="float32"))
    written = mx.load(str(out / "model.safetensors"))
    assert "model.layers.2.eh_proj.scales" in written and "model.layers.2.mlp.switch_mlp.gate_proj.weight" in written
    assert not any(k.startswith("mtp.") for k in written)
    ours = mlxmodels.load_model(out)
    source = loaded(name)
    ids = mx.array(reference_ids(name))
    a, _ = ours.mtp[0](ours.model(ids), ids, ours.mtp[0].make_cache())
    b, _ = source.mtp[0](source.model(ids), ids, source.mtp[0].make_cache())
    assert np.abs(np.array(a - b)).max() < 0.05 * np.abs(np.array(b)).max()


# --- config and checkpoint errors ---------------------------------------------------------------------

MALFORMED = [
    ("deepseek_v2", {"qk_head_dim": 30}, "qk_head_dim"),
    ("deepseek_v2", {"qk_rope_head_dim": 7, "qk_head_dim": 23}, "qk_rope_head_dim"),
    ("deepseek_v2", {"num_key_value_heads": 1}, "num_key_value_heads"),
    ("deepseek_v2", {"kv_lora_rank": None}, "kv_lora_rank"),
    ("deepseek_v2", {"q_lora_rank": 0}, "q_lora_rank"),
    ("deepseek_v2_hf4", {"q_lora_rank": "absent"}, "q_lora_rank"),
    ("deepseek_v2", {"topk_method": "noaux_tc"}, "topk_method"),
    ("deepseek_v2", {"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ("deepseek_v2", {"moe_layer_freq": 0}, "moe_layer_freq"),
    ("deepseek_v2_group", {"topk_group": 5}, "topk_group"),
    ("deepseek_v2_group", {"n_group": 3}, "n_group"),
    ("deepseek_v2_group", {"num_experts_per_tok": 5}, "num_experts_per_tok"),  # 2 groups of 2 allowed: 4
    ("deepseek_v3", {"topk_group": 5}, "topk_group"),
    ("deepseek_v3", {"n_group": 8}, "n_group"),  # 1 expert per group: no top-2
    ("deepseek_v3_hf4", {"n_routed_experts": None}, "n_routed_experts"),
    ("deepseek_v3_mtp", {"num_nextn_predict_layers": -1}, "num_nextn_predict_layers"),
    ("glm4_moe", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("glm4_moe", {"topk_group": 3}, "topk_group"),
    ("glm4_moe_hf4", {"partial_rotary_factor": 0.03}, "partial_rotary_factor"),
]


@pytest.mark.parametrize("name,changes,field", MALFORMED, ids=[f"{n}-{f}-{i}" for i, (n, _, f) in enumerate(MALFORMED)])
def test_malformed_config_names_the_field(name, changes, field):
    config = read_config(name)
    for key, value in changes.items():
        if value is None or value == "absent":
            config.pop(key, None)
        else:
            config[key] = value
    with pytest.raises(ConfigError) as e:
        build_model(config)
    message = str(e.value)
    assert "\n" not in message and field in message and message.startswith("config.json: "), message


def copy_with(tmp_path, name: str, config_changes: dict | None = None, tensor_changes: dict | None = None,
              drop_prefix: str | None = None):
    bad = tmp_path / f"bad-{name}-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(FIXTURES / name, bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(config_changes or {})
    (bad / "config.json").write_text(json.dumps(config))
    if tensor_changes or drop_prefix:
        weights = dict(mx.load(str(bad / "model.safetensors")))
        weights.update(tensor_changes or {})
        weights = {k: v for k, v in weights.items() if not (drop_prefix and k.startswith(drop_prefix))}
        mx.save_safetensors(str(bad / "model.safetensors"), weights, metadata={"format": "pt"})
    return bad


def test_malformed_config_on_the_command_line(tmp_path, capsys):
    bad = copy_with(tmp_path, "deepseek_v3", {"topk_group": 7})
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, "topk_group", "7", str(bad / "config.json"))


def test_router_bias_of_the_wrong_length_names_the_tensor(tmp_path, capsys):
    bias = "model.layers.1.mlp.gate.e_score_correction_bias"
    bad = copy_with(tmp_path, "deepseek_v3", tensor_changes={bias: mx.zeros((5,))})
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, bias, "(5,)", "(8,)")


@pytest.mark.parametrize(
    "name,changes,needles",
    [
        # The MoE moved to layer 0: its experts are not where the config puts them.
        ("deepseek_v2", {"first_k_dense_replace": 0}, ["model.layers.0.mlp.", "lacks"]),
        # Latent width changed: kv_a_proj_with_mqa's and kv_b_proj's shapes disagree.
        ("deepseek_v3", {"kv_lora_rank": 16}, ["self_attn.kv_a_proj_with_mqa.weight", "shape"]),
        # A plain q_proj declared where the checkpoint has the low-rank pair.
        ("deepseek_v3", {"q_lora_rank": None}, ["model.layers.0.self_attn.q_proj.weight", "lacks"]),
        # A second MTP block declared: block 1's tensors are missing.
        ("glm4_moe", {"num_nextn_predict_layers": 2}, ["mtp.1.", "lacks"]),
        # No MTP block declared: the checkpoint's model.layers.2.* are not part of the model.
        ("glm4_moe", {"num_nextn_predict_layers": 0}, ["model.layers.2.", "unexpected"]),
    ],
    ids=["moe-layers", "latent-width", "q-lora", "mtp-count", "no-mtp"],
)
def test_checkpoint_disagreeing_with_the_config_names_layer_and_tensor(tmp_path, name, changes, needles):
    bad = copy_with(tmp_path, name, changes)
    with pytest.raises(WeightsError) as e:
        mlxmodels.load_model(bad)
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in needles), message


# --- other checkpoint layouts and model types, and the CLI -------------------------------------------

def test_kimi_k2_model_type_is_deepseek_v3(tmp_path, loaded):
    k2 = copy_with(tmp_path, "deepseek_v3", {"model_type": "kimi_k2"})
    ids = mx.array(reference_ids("deepseek_v3"))
    np.testing.assert_array_equal(np.array(mlxmodels.load_model(k2)(ids)), np.array(loaded("deepseek_v3")(ids)))


def test_mlx_lm_converted_checkpoint_loads_to_mlx_lm_logits(tmp_path):
    """mlx_lm.convert's 4-bit DeepSeek-V3 layout: kv_b_proj split into a transposed `embed_q` and
    `unembed_out` (both quantized), a quantized kv_a_proj_with_mqa, `switch_mlp`, `shared_experts`.
    Orchard keeps the latent projections in float (dequantized as stored) and joins kv_b_proj back:
    the same numbers as mlx-lm's (atol as in test_convert: 1e-4)."""
    from mlx_lm import convert as mlx_lm_convert
    from mlx_lm import load as mlx_lm_load

    config = read_config("deepseek_v3")
    config.pop("_source")
    config.update(kv_lora_rank=64, qk_nope_head_dim=64, qk_head_dim=72)  # mlx-lm quantizes along both
    model = randomise(build_model(config), seed=8)
    save_model_dir(tmp_path / "float", config, dict(tree_flatten(model.parameters())))
    for file in ("tokenizer.json", "tokenizer_config.json"):  # mlx_lm.convert insists on a tokenizer
        shutil.copy(FIXTURES / "deepseek_v3" / file, tmp_path / "float" / file)
    convert(tmp_path / "float", tmp_path / "mlx-names", ConvertOptions(dequantize=True, dtype="float32"))
    mlx_lm_convert(hf_path=str(tmp_path / "mlx-names"), mlx_path=str(tmp_path / "mlx-lm-4bit"), quantize=True,
                   q_bits=4, dtype="float32")
    written = mx.load(str(tmp_path / "mlx-lm-4bit" / "model.safetensors"))
    for name in ("layers.1.self_attn.embed_q.scales", "layers.1.self_attn.kv_a_proj_with_mqa.scales",
                 "layers.1.mlp.switch_mlp.gate_proj.scales"):
        assert f"model.{name}" in written

    ids = mx.array(reference_ids("deepseek_v3"))
    theirs_model, _ = mlx_lm_load(str(tmp_path / "mlx-lm-4bit"))
    theirs_model.set_dtype(mx.float32)
    ours = mlxmodels.load_model(tmp_path / "mlx-lm-4bit")
    assert type(ours.layers[1].self_attn.kv_b_proj).__name__ == "FloatLinear"
    np.testing.assert_allclose(np.array(ours(ids)), np.array(theirs_model(ids)), atol=1e-4, rtol=1e-4)


def test_conversion_keeps_latent_projections_and_routers_in_float(tmp_path):
    config = read_config("deepseek_v3")
    config.pop("_source")
    config.update(kv_lora_rank=64, qk_nope_head_dim=64, qk_head_dim=72)  # wide enough to quantize
    model = randomise(build_model(config), seed=9)
    save_model_dir(tmp_path / "float", config, dict(tree_flatten(model.parameters())))
    convert(tmp_path / "float", tmp_path / "q4", ConvertOptions(bits=4, dtype="float32"))
    written = mx.load(str(tmp_path / "q4" / "model.safetensors"))
    quantized = {k.removesuffix(".scales") for k in written if k.endswith(".scales")}
    for layer in range(2):
        prefix = f"model.layers.{layer}.self_attn"
        assert f"{prefix}.q_a_proj" in quantized
        assert f"{prefix}.kv_a_proj_with_mqa" not in quantized and f"{prefix}.kv_b_proj" not in quantized
    assert "model.layers.1.mlp.gate" not in quantized and "model.layers.1.mlp.switch_mlp.up_proj" in quantized


@pytest.mark.parametrize("name,kv_bits", [("deepseek_v2", None), ("deepseek_v2_group", None), ("deepseek_v3_mtp", None),
                                          ("glm4_moe", None), ("deepseek_v3", 8), ("deepseek_v3_mtp", 4)])
def test_orchard_run(name, kv_bits, capsys):
    from app.main import main

    argv = ["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5"]
    code = main(argv + (["--kv-bits", str(kv_bits)] if kv_bits else []))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    assert len(captured.out.rstrip("\n")) <= 5  # the char tokenizer: at most one character per token


def test_mlx_lm_reads_a_plain_rope_deepseek_v2_conversion(tmp_path):
    """mlx-lm 0.32's deepseek_v2 needs `rope_scaling`: the export writes plain RoPE as scaling by a
    factor of 1 (its YaRN then rotates exactly as plain RoPE). The fixtures with plain RoPE carry
    mlp_bias, which mlx-lm lacks, so this one is made here: same logits in both (atol 1e-4)."""
    from mlx_lm import load as mlx_lm_load

    config = read_config("deepseek_v2")
    config.pop("_source")
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    model = randomise(build_model(config), seed=10)
    save_model_dir(tmp_path / "float", config, dict(tree_flatten(model.parameters())))
    for file in ("tokenizer.json", "tokenizer_config.json"):  # mlx-lm's load reads a tokenizer
        shutil.copy(FIXTURES / "deepseek_v2" / file, tmp_path / "float" / file)
    convert(tmp_path / "float", tmp_path / "q4", ConvertOptions(bits=4, dtype="float32"))
    written = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert written["rope_scaling"] == {"factor": 1.0} and "rope_parameters" not in written
    ids = mx.array(reference_ids("deepseek_v2"))
    theirs_model, _ = mlx_lm_load(str(tmp_path / "q4"))
    theirs_model.set_dtype(mx.float32)
    ours = mlxmodels.load_model(tmp_path / "q4")
    np.testing.assert_allclose(np.array(ours(ids)), np.array(theirs_model(ids)), atol=1e-4, rtol=1e-4)
