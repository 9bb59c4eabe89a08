"""Gated DeltaNet and its families (Qwen3-Next, Qwen3.5, Qwen3.5-MoE) beyond logit parity
(tests/test_parity.py compares every fixture with transformers, full sequence and cached).

- The mixer's chunked prefill against its own token-by-token decode (the plain recurrence), at
  lengths that do and do not divide the chunk, shorter than one chunk, and continuing from a carried
  state; both projection layouts, with and without value heads sharing a key head.
- The caches: one `SSMCache` per Gated DeltaNet layer, of fixed size, and a `KVCache` per attention
  layer; snapshots continue a prefix as a fresh prefill would.
- Checkpoint layouts: multimodal Qwen3.5 (`model.language_model.*`, vision tower and `mtp.*` dropped,
  settings under `text_config`), MLX layout (scales 1 + w already applied, conv kernels [C, K, 1]),
  mlx-lm's own 4-bit conversions (computing what mlx-lm computes), quantized beta/alpha projections
  dequantized; what stays float when converting.
- Malformed configs and checkpoints: one-line errors naming the field, or the layer and tensor.
- `orchard run` on each fixture.

Tolerance: 1e-5 of the output scale between two of our own float32 paths (chunked against
recurrent): they differ only in summation order (and the chunked form's triangular inverse), which
measured < 5e-7 here; a wrong decay, mask or carried state is off by far more.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES
from mlx.utils import tree_flatten
from test_errors import assert_one_line_error, run_cli

import mlxmodels
from mlxmodels.cache import KVCache, SSMCache, copy_cache
from mlxmodels.convert import quantizable_modules
from mlxmodels.errors import ConfigError
from mlxmodels.export import save_model_dir
from mlxmodels.layers.gated_deltanet import GatedDeltaNet
from mlxmodels.layers.moe import Router
from mlxmodels.models import build_model

TIGHT = 1e-5
FIXTURE_NAMES = ["qwen3_next", "qwen3_next_hf4", "qwen3_5", "qwen3_5_moe"]


def assert_close(ours, theirs, what: str, tolerance: float = TIGHT) -> None:
    ours, theirs = np.array(ours), np.array(theirs)
    scale = max(np.abs(theirs).max(), 1e-6)
    error = np.abs(ours - theirs).max()
    assert error <= tolerance * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def reference_ids(name: str) -> np.ndarray:
    return np.load(FIXTURES / name / "reference.npz")["input_ids"]


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = mlxmodels.load_model(FIXTURES / name)
        return cache[name]

    return get


# --- the mixer -------------------------------------------------------------------------------

CHUNK = 8


def random_mixer(fused: bool, value_heads: int) -> GatedDeltaNet:
    mx.random.seed(7)
    mixer = GatedDeltaNet(32, num_key_heads=2, num_value_heads=value_heads, key_head_dim=8, value_head_dim=4,
                          conv_kernel=4, eps=1e-6, fused_projections=fused, chunk_size=CHUNK)
    # Decays from ~0.98 (long memory) to ~0.05 per token, as trained models have.
    mixer.A_log = mx.log(mx.linspace(0.02, 3.0, value_heads))
    mixer.dt_bias = mx.random.uniform(-1.0, 1.0, (value_heads,))
    mixer.conv1d.weight = 0.5 * mx.random.normal(mixer.conv1d.weight.shape)
    mixer.norm.weight = 1.0 + 0.1 * mx.random.normal(mixer.norm.weight.shape)
    return mixer


def token_by_token(mixer, x: mx.array, cache: SSMCache) -> mx.array:
    return mx.concatenate([mixer(x[:, t : t + 1], cache) for t in range(x.shape[1])], axis=1)


@pytest.mark.parametrize("length", [16, 21, 5], ids=["divides-chunk", "partial-chunk", "shorter-than-chunk"])
@pytest.mark.parametrize("fused,value_heads", [(True, 4), (False, 6), (False, 2)],
                         ids=["fused-2to4", "split-2to6", "split-2to2"])
def test_prefill_matches_token_by_token(fused, value_heads, length):
    mixer = random_mixer(fused, value_heads)
    x = mx.random.normal((2, length, 32))
    stepped = SSMCache()
    expected = token_by_token(mixer, x, stepped)
    whole = SSMCache()
    assert_close(mixer(x, whole), expected, f"prefill of {length}")
    assert_close(whole.ssm, stepped.ssm, "final state")
    # The window holds projected inputs: one product of all the rows against one per token, which a
    # BLAS may round differently by row count (seen: 3.6e-7 of 2.1 on an AMD EPYC), so not exactly.
    assert_close(whole.conv, stepped.conv, "conv window")
    assert whole.offset == stepped.offset == length


@pytest.mark.parametrize("fused", [True, False])
def test_prefill_continues_from_a_carried_state(fused):
    """A second prefill starts mid-chunk from the first one's state and conv window."""
    mixer = random_mixer(fused, 4)
    x = mx.random.normal((1, 30, 32))
    expected = token_by_token(mixer, x, SSMCache())
    cache = SSMCache()
    first = mixer(x[:, :11], cache)
    got = mx.concatenate([first, mixer(x[:, 11:], cache)], axis=1)
    assert_close(got, expected, "prefill 11 + 19")
    assert cache.ssm.dtype == mx.float32 and cache.ssm.shape == (1, 4, 8, 4)


def test_state_matters():
    """The carried state changes the output: a mixer that dropped it would fail the tests above only
    through this difference."""
    mixer = random_mixer(False, 4)
    x = mx.random.normal((1, 12, 32))
    cache = SSMCache()
    mixer(x[:, :6], cache)
    with_state, fresh = mixer(x[:, 6:], cache), mixer(x[:, 6:])
    assert np.abs(np.array(with_state) - np.array(fresh)).max() > 1e-2 * np.abs(np.array(fresh)).max()


# --- the caches ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["qwen3_next", "qwen3_5", "qwen3_5_moe"])
def test_cache_kinds_and_fixed_state(name, loaded):
    model = loaded(name)
    cache = model.make_cache()
    kinds = [type(c) for c in cache]
    assert kinds == [SSMCache, KVCache]  # the fixtures' pattern: linear_attention, full_attention
    model(mx.array([[5] * 4]), cache=cache)
    size = cache[0].nbytes
    args = model.args
    conv = (args.linear_conv_kernel_dim - 1) * (2 * args.linear_num_key_heads * args.linear_key_head_dim
                                                 + args.linear_num_value_heads * args.linear_value_head_dim)
    state = args.linear_num_value_heads * args.linear_key_head_dim * args.linear_value_head_dim
    assert size == 4 * (conv + state)  # float32: the conv window and the delta-rule state, nothing else
    model(mx.array([[7] * 70]), cache=cache)
    assert cache[0].nbytes == size and cache[0].offset == cache[1].offset == 74
    assert not cache[0].can_trim(1) and cache[1].can_trim(1)


def test_snapshot_continues_a_prefix(loaded):
    """What a chat does with a cache that cannot rewind: prefill the shared prefix, snapshot, continue."""
    model = loaded("qwen3_next")
    ids = reference_ids("qwen3_next")
    prefix, a, b = ids[:, :30], ids[:, 30:50], ids[:, 50:]
    cache = model.make_cache()
    model(mx.array(prefix), cache=cache)
    snapshot = copy_cache(cache)
    model(mx.array(a), cache=cache)  # must not disturb the snapshot
    got = model(mx.array(b), cache=copy_cache(snapshot))
    full = model(mx.array(np.concatenate([prefix, b], axis=1)))
    assert_close(got, full[:, 30:], "continuation from a snapshot")


# --- checkpoint layouts ----------------------------------------------------------------------

def write_checkpoint(path, config: dict, weights: dict) -> None:
    path.mkdir()
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(config))


def multimodal_checkpoint(name: str, out) -> None:
    """A fixture as Qwen3.5 is released: a multimodal config whose text settings sit in `text_config`
    (with the 4.x-style `full_attention_interval` mlx-lm needs), the language model under
    `model.language_model.*` with fused experts, plus vision-tower and multi-token-prediction tensors."""
    src = FIXTURES / name
    text_config = json.loads((src / "config.json").read_text())
    text_config["full_attention_interval"] = 2
    config = {"model_type": text_config["model_type"].removesuffix("_text"), "text_config": text_config,
              "vision_config": {"hidden_size": 16}, "tie_word_embeddings": text_config["tie_word_embeddings"]}
    weights = {k.replace("model.", "model.language_model.", 1): v
               for k, v in mx.load(str(src / "model.safetensors")).items()}
    for layer in range(text_config["num_hidden_layers"] if "num_experts" in text_config else 0):
        experts = f"model.language_model.layers.{layer}.mlp.experts"
        count = text_config["num_experts"]
        stacked = {p: mx.stack([weights.pop(f"{experts}.{e}.{p}.weight") for e in range(count)])
                   for p in ("gate_proj", "up_proj", "down_proj")}
        weights[f"{experts}.gate_up_proj"] = mx.concatenate([stacked["gate_proj"], stacked["up_proj"]], axis=1)
        weights[f"{experts}.down_proj"] = stacked["down_proj"]
    weights["model.visual.patch_embed.proj.weight"] = mx.zeros((16, 3, 2, 2, 2))
    weights["mtp.fc.weight"] = mx.zeros((64, 128))
    write_checkpoint(out, config, weights)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / file, out / file)


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5_moe"])
def test_multimodal_qwen3_5_checkpoint_loads_the_text_model(name, tmp_path, loaded):
    multimodal_checkpoint(name, tmp_path / "mm")
    ids = mx.array(reference_ids(name))
    model = mlxmodels.load_model(tmp_path / "mm")
    assert model.info.model_type == f"{name}_text"  # read_config merged text_config
    assert_close(model(ids), loaded(name)(ids), "multimodal layout", 0)


@pytest.mark.parametrize("name,recipe", [
    ("qwen3_next_hf4", None), ("qwen3_5_moe", None), ("qwen3_5_moe", "mixed_4_6"),
])
def test_mlx_lm_quantized_checkpoint_loads(name, recipe, tmp_path):
    """What mlx-community publishes: mlx-lm's own 4-bit conversion (norm scales 1 + w, `switch_mlp`
    experts, the beta/alpha projections quantized, per-module entries for its 8-bit routers or a mixed
    recipe's 6-bit layers, for Qwen3.5 everything under `language_model.`). Orchard computes what
    mlx-lm computes on it: both dequantize the same tensors in float32, so only summation order differs
    (atol 1e-4 on logits ~8)."""
    from mlx_lm import load as mlx_lm_load
    from mlx_lm.convert import convert as mlx_lm_convert

    src = FIXTURES / name
    if name.startswith("qwen3_5"):
        src = tmp_path / "mm"
        multimodal_checkpoint(name, src)
    out = tmp_path / "mlx-lm-4bit"
    mlx_lm_convert(str(src), mlx_path=str(out), quantize=True, q_group_size=64, q_bits=4, quant_predicate=recipe)
    quantization = json.loads((out / "config.json").read_text())["quantization"]
    assert any(isinstance(v, dict) for v in quantization.values())  # per-module entries, found by name
    ids = mx.array(reference_ids(name))
    theirs, _ = mlx_lm_load(str(out))
    theirs.set_dtype(mx.float32)
    ours = mlxmodels.load_model(out)
    np.testing.assert_allclose(np.array(ours(ids)), np.array(theirs(ids)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["qwen3_next", "qwen3_5_moe"])
def test_mlx_layout_checkpoint_loads_the_same_model(name, tmp_path, loaded):
    """Our own parameters saved as they are (norm scales 1 + w, conv kernels [C, K, 1], stacked
    experts under mlx-lm's `switch_mlp`): recognised as MLX layout, so no second + 1."""
    model = loaded(name)
    saved = {k.replace(".experts.", ".switch_mlp."): v for k, v in tree_flatten(model.parameters())}
    assert saved["model.layers.0.linear_attn.conv1d.weight"].shape[-1] == 1
    save_model_dir(tmp_path / "mlx", json.loads((FIXTURES / name / "config.json").read_text()), saved)
    ids = mx.array(reference_ids(name))
    assert_close(mlxmodels.load_model(tmp_path / "mlx")(ids), model(ids), "MLX layout", 0)


def test_quantized_beta_alpha_projection_is_dequantized(tmp_path, loaded):
    """mlx-lm quantizes `in_proj_ba` (and Qwen3.5's `in_proj_b` / `in_proj_a`) with the rest; they stay
    float here, dequantized on load."""
    src = FIXTURES / "qwen3_next"
    weights = dict(mx.load(str(src / "model.safetensors")))
    key = "model.layers.0.linear_attn.in_proj_ba"
    w, scales, biases = mx.quantize(weights[f"{key}.weight"], 32, 8)
    weights[f"{key}.weight"], weights[f"{key}.scales"], weights[f"{key}.biases"] = w, scales, biases
    config = json.loads((src / "config.json").read_text())
    config["quantization"] = {"group_size": 32, "bits": 8}
    write_checkpoint(tmp_path / "q", config, weights)
    projection = mlxmodels.load_model(tmp_path / "q").layers[0].linear_attn.in_proj_ba
    assert isinstance(projection, Router)
    assert_close(projection.weight, mx.dequantize(w, scales, biases, 32, 8), "dequantized in_proj_ba", 0)


@pytest.mark.parametrize("name", ["qwen3_next", "qwen3_5", "qwen3_5_moe"])
def test_small_sensitive_tensors_are_never_quantized(name):
    config = json.loads((FIXTURES / name / "config.json").read_text())
    config.update(hidden_size=128, head_dim=64, linear_key_head_dim=64, linear_value_head_dim=64,
                  moe_intermediate_size=64, shared_expert_intermediate_size=64, intermediate_size=64)
    quantizable = quantizable_modules(config, 64)
    assert "model.layers.0.linear_attn.out_proj" in quantizable  # the shapes allow quantizing
    float_only = ("in_proj_ba", "in_proj_b", "in_proj_a", "conv1d", "mlp.gate", "shared_expert_gate", "norm")
    assert not [m for m in quantizable if m.endswith(float_only)]


# --- errors ----------------------------------------------------------------------------------

MALFORMED = [
    ("qwen3_next", {"layer_types": ["linear_attention"]}, "layer_types"),
    ("qwen3_5", {"layer_types": ["linear_attention", "mamba"]}, "layer_types"),
    ("qwen3_next_hf4", {"full_attention_interval": 0}, "full_attention_interval"),
    ("qwen3_next", {"linear_num_value_heads": 3}, "linear_num_value_heads"),
    ("qwen3_5", {"linear_key_head_dim": None}, "linear_key_head_dim"),
    ("qwen3_5_moe", {"num_key_value_heads": 4}, "num_key_value_heads"),
    ("qwen3_next_hf4", {"partial_rotary_factor": 1.5}, "partial_rotary_factor"),
    ("qwen3_next", {"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ("qwen3_next", {"num_experts": None}, "num_experts"),
    ("qwen3_5_moe", {"shared_expert_intermediate_size": None}, "shared_expert_intermediate_size"),
    ("qwen3_5", {"hidden_act": "gelu"}, "hidden_act"),
]


@pytest.mark.parametrize("name,changes,field", MALFORMED, ids=[f"{n}-{f}" for n, _, f in MALFORMED])
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


@pytest.mark.parametrize("changes,needles", [
    # The layer kinds swapped: layer 0 is built as attention, and the checkpoint has none there.
    ({"layer_types": ["full_attention", "linear_attention"]}, ["model.layers.0.self_attn"]),
    # More value heads than the checkpoint's tensors were made for.
    ({"linear_num_value_heads": 8}, ["model.layers.0.linear_attn.", "shape"]),
], ids=["layer-pattern", "state-size"])
def test_checkpoint_disagreeing_with_the_config(changes, needles, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "qwen3_next", bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(changes)
    (bad / "config.json").write_text(json.dumps(config))
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_orchard_run(name, capsys):
    from app.main import main

    code = main(["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    assert len(captured.out.rstrip("\n")) <= 5  # the char tokenizer: at most one character per token
