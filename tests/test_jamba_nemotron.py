"""Jamba and Nemotron-H beyond logit parity (tests/test_parity.py covers every fixture).

- Their mixers' prefill paths against the token-by-token recurrence on random inputs: Jamba's
  Mamba-1 with dt/B/C norms (block scan), Nemotron-H's Mamba-2 with a dt floor (chunked SSD), at
  lengths that do and do not divide the block / chunk, with and without a carried state.
- Nemotron-H's MoE (non-gated relu^2 experts between latent projections, shared expert) against
  the same computation in plain NumPy, on both gather paths.
- Caches: one per layer, of the layer's kind; recurrent state of fixed size; a prefix snapshot.
- Config spellings (layers_block_type, hybrid_override_pattern, legacy names, aliases) and
  checkpoint layouts (transformers 5's `model.` prefix and fused experts) load the same model.
- Malformed configs and checkpoints that disagree with their config give one-line errors naming
  the field, layer or tensor; `orchard run` works on every fixture.

Tolerances: float32 on both sides, differing only in summation order; 1e-5 relative (of the output
scale) is ~10x the rounding noise seen and far below what a wrong index, decay or norm causes.
"""

from __future__ import annotations

import json
import math
import shutil

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES
from test_errors import assert_one_line_error, run_cli

import mlxmodels
from mlxmodels.cache import KVCache, SSMCache, StatelessCache, can_trim_cache, copy_cache, trim_cache
from mlxmodels.errors import ConfigError
from mlxmodels.layers import moe, ssm
from mlxmodels.models import build_model, nemotron_h

TIGHT = 1e-5
FIXTURE_NAMES = ["jamba", "nemotron_h", "nemotron_h_hf4", "nemotron_h_dense"]


def assert_close(ours, theirs, what: str, tolerance: float = TIGHT) -> None:
    ours, theirs = np.array(ours), np.array(theirs)
    scale = max(np.abs(theirs).max(), 1e-6)
    error = np.abs(ours - theirs).max()
    assert error <= tolerance * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def reference_ids(name: str) -> np.ndarray:
    return np.load(FIXTURES / name / "reference.npz")["input_ids"]


def fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = mlxmodels.load_model(FIXTURES / name)
        return cache[name]

    return get


def prefill_vs_steps(mixer, x: mx.array, carried: int):
    """(one prefill after `carried` tokens, the same tokens one at a time, both final states)."""
    whole, steps = SSMCache(), SSMCache()
    if carried:
        mixer(x[:, :carried], whole)
        for t in range(carried):
            mixer(x[:, t : t + 1], steps)
    got = mixer(x[:, carried:], whole)
    expected = mx.concatenate([mixer(x[:, t : t + 1], steps) for t in range(carried, x.shape[1])], axis=1)
    return got, expected, whole, steps


# --- the mixers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [16, 21, 40])  # one scan block, not a multiple, several blocks
@pytest.mark.parametrize("carried", [0, 5])
def test_jamba_mamba_prefill_matches_token_by_token(length, carried):
    assert ssm.SCAN_BLOCK == 16
    mx.random.seed(length + carried)
    mixer = ssm.MambaMixer(16, 32, state=8, conv_kernel=4, dt_rank=3, use_bias=False, conv_bias=True,
                           inner_norm_eps=1e-6)
    for norm in (mixer.dt_layernorm, mixer.b_layernorm, mixer.c_layernorm):
        norm.weight = mx.random.uniform(0.5, 1.5, norm.weight.shape)
    x = mx.random.normal((2, carried + length, 16))
    got, expected, whole, steps = prefill_vs_steps(mixer, x, carried)
    assert_close(got, expected, f"jamba mamba {length} tokens after {carried}")
    assert_close(whole.ssm, steps.ssm, "final state")
    assert whole.offset == steps.offset == carried + length


def test_jamba_inner_norms_are_applied():
    """The norms sit between x_proj and the scan: scaling x_proj's output leaves dt, B, C unchanged
    (up to the epsilon, negligible here)."""
    mx.random.seed(0)
    mixer = ssm.MambaMixer(16, 32, state=8, conv_kernel=4, dt_rank=3, use_bias=False, conv_bias=True,
                           inner_norm_eps=1e-12)
    x = mx.random.normal((1, 9, 16))
    before = mixer(x)
    mixer.x_proj.weight = mixer.x_proj.weight * 7.0
    assert_close(mixer(x), before, "x_proj scaled under the norms", 1e-4)


@pytest.mark.parametrize("length", [14, 17])  # a multiple of the chunk (7) and not
@pytest.mark.parametrize("carried", [0, 4])
def test_nemotron_mamba2_with_dt_floor_matches_token_by_token(length, carried):
    mx.random.seed(length * 10 + carried)
    mixer = ssm.Mamba2Mixer(16, heads=8, head_dim=4, state=8, groups=4, conv_kernel=4, chunk_size=7, eps=1e-5,
                            use_bias=False, conv_bias=True, dt_limit=(0.2, math.inf))
    mixer.dt_bias = mx.random.uniform(-6, -1, (8,))  # most dt below the floor
    x = mx.random.normal((2, carried + length, 16))
    got, expected, whole, steps = prefill_vs_steps(mixer, x, carried)
    assert_close(got, expected, f"nemotron mamba2 {length} tokens after {carried}")
    assert_close(whole.ssm, steps.ssm, "final state")
    floored = np.array(mixer(x))
    mixer.dt_limit = (0.0, math.inf)
    # The floor acts (1-2% of the output scale here, 1000x the tolerance above).
    assert np.abs(np.array(mixer(x)) - floored).max() > 1e-3 * np.abs(floored).max()


def naive_nemotron_moe(layer: moe.SparseMoE, x: mx.array) -> np.ndarray:
    """Token by token in NumPy: the routed relu^2 experts on the latent projection, then back, plus
    the shared relu^2 expert on the token itself."""
    indices, weights = (np.array(t) for t in layer.route(x))
    up, down = np.array(layer.experts.up_proj.weight), np.array(layer.experts.down_proj.weight)

    def linear(module, v):
        return v @ np.array(module.weight).T + (np.array(module.bias) if "bias" in module else 0.0)

    def relu2(v):
        return np.maximum(v, 0.0) ** 2

    out = []
    for n, token in enumerate(np.array(x)):
        latent = linear(layer.fc1_latent_proj, token)
        routed = sum(w * (relu2(up[e] @ latent) @ down[e].T) for e, w in zip(indices[n], weights[n]))
        shared = linear(layer.shared_expert.down_proj, relu2(linear(layer.shared_expert.up_proj, token)))
        out.append(linear(layer.fc2_latent_proj, routed) + shared)
    return np.stack(out)


@pytest.mark.parametrize("tokens", [1, 3, 40], ids=["decode", "few-unsorted", "prefill-sorted"])
def test_nemotron_moe_matches_plain_ops(tokens):
    mx.random.seed(tokens)
    layer = moe.SparseMoE(32, 24, num_experts=8, top_k=2, norm_topk_prob=True, act="relu2", shared_hidden_dims=16,
                          scoring="sigmoid", correction_bias=True, n_group=2, topk_group=1,
                          routed_scaling_factor=2.5, gated=False, latent_dims=12, mlp_bias=True)
    layer.gate.weight = mx.random.normal(layer.gate.weight.shape) / math.sqrt(32)
    layer.gate.e_score_correction_bias = mx.random.uniform(0, 0.3, (8,))
    assert isinstance(layer.experts, moe.SwitchMLP) and layer.experts.up_proj.weight.shape == (8, 24, 12)
    x = mx.random.normal((tokens, 32))
    assert (tokens * 2 >= moe.SORT_THRESHOLD) == (tokens == 40)  # both gather paths are exercised
    assert_close(layer(x), naive_nemotron_moe(layer, x), f"nemotron moe {tokens} tokens")


# --- caches -------------------------------------------------------------------------------------

def test_cache_kinds_follow_the_layer_pattern(loaded):
    assert [type(c) for c in loaded("jamba").make_cache()] == [SSMCache, KVCache, SSMCache, SSMCache]
    assert [type(c) for c in loaded("nemotron_h").make_cache()] == [SSMCache, StatelessCache, KVCache,
                                                                   StatelessCache]
    assert [type(c) for c in loaded("nemotron_h_dense").make_cache()] == [SSMCache, StatelessCache, KVCache,
                                                                         SSMCache, StatelessCache]


@pytest.mark.parametrize("name", ["jamba", "nemotron_h"])
def test_recurrent_state_has_a_fixed_size(name, loaded):
    model = loaded(name)
    cache = model.make_cache()
    model(mx.array([[5] * 4]), cache=cache)
    recurrent = [c for c in cache if isinstance(c, SSMCache)]
    kv = [c for c in cache if isinstance(c, KVCache)]
    size, kv_size = sum(c.nbytes for c in recurrent), sum(c.nbytes for c in kv)
    model(mx.array([[7] * 300]), cache=cache)  # past KVCache's first 256-token buffer
    assert sum(c.nbytes for c in recurrent) == size > 0
    assert sum(c.nbytes for c in kv) > kv_size
    assert {c.offset for c in cache} == {304}  # every layer, stateless ones included, counts tokens
    assert not can_trim_cache(cache, 1) and not trim_cache(cache, 1)  # the recurrent state cannot rewind


def test_stateless_cache_counts_rewinds_and_copies():
    cache = StatelessCache()
    cache.advance(5)
    snapshot = cache.copy()
    cache.advance(2)
    assert (cache.offset, snapshot.offset) == (7, 5)
    assert cache.can_trim(7) and not cache.can_trim(8) and cache.trim(3) == 3 and cache.offset == 4
    assert cache.state == [] and cache.nbytes == 0 and cache.mask(4) is None


@pytest.mark.parametrize("name", ["jamba", "nemotron_h"])
def test_snapshot_reuses_a_prefix(name, loaded):
    """What a chat does: prefill the shared prefix once, snapshot, continue two ways."""
    model = loaded(name)
    ids = reference_ids(name)
    prefix, a, b = ids[:, :10], ids[:, 10:17], ids[:, 17:]
    cache = model.make_cache()
    model(mx.array(prefix), cache=cache)
    snapshot = copy_cache(cache)
    model(mx.array(a), cache=cache)  # the first continuation must not disturb the snapshot
    got = model(mx.array(b), cache=copy_cache(snapshot))
    full = model(mx.array(np.concatenate([prefix, b], axis=1)))
    assert_close(got, full[:, 10:], f"{name} continuation from a snapshot")
    assert {c.offset for c in snapshot} == {10}


# --- config spellings and checkpoint layouts ------------------------------------------------------

def test_every_spelling_of_the_nemotron_layer_list_reads_the_same():
    base = {k: v for k, v in fixture_config("nemotron_h").items() if k != "layers_block_type"}
    spellings = [
        {"layers_block_type": ["linear_attention", "moe", "full_attention", "mlp"]},
        {"layer_types": ["linear_attention", "moe", "full_attention", "mlp"]},
        {"layers_block_type": ["mamba", "moe", "attention", "mlp"]},  # names transformers remaps
        {"hybrid_override_pattern": "ME*-", "num_hidden_layers": 4},
    ]
    kinds = [nemotron_h.ModelArgs.from_config({**base, **s}).block_kinds for s in spellings]
    assert kinds == [["mamba", "moe", "attention", "mlp"]] * 4


def test_nemotron_reads_the_older_mamba_field_names():
    config = fixture_config("nemotron_h_dense")
    older = {k: v for k, v in config.items() if k not in ("n_groups", "conv_kernel", "chunk_size", "time_step_min")}
    older.update(mamba_n_groups=config["n_groups"], mamba_d_conv=config["conv_kernel"],
                 mamba_chunk_size=config["chunk_size"], mamba_dt_min=config["time_step_min"])
    assert nemotron_h.ModelArgs.from_config(older) == nemotron_h.ModelArgs.from_config(config)


def _save_variant(tmp_path, name: str, weights: dict) -> mx.array:
    out = tmp_path / name
    out.mkdir()
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    shutil.copy(FIXTURES / name / "config.json", out / "config.json")
    return mlxmodels.load_model(out)(mx.array(reference_ids(name)))


def test_transformers5_names_and_fused_experts_load_the_same_model(tmp_path, loaded):
    """transformers 5 holds Nemotron-H as `model.*` with experts stacked under `experts.up_proj`
    (no `.weight`), and Jamba's as `experts.gate_up_proj`; checkpoints written that way load too."""
    weights = dict(mx.load(str(FIXTURES / "nemotron_h" / "model.safetensors")))
    renamed = {"model." + k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in weights.items()}
    prefix = "model.layers.1.mixer.experts"
    for proj in ("up_proj", "down_proj"):
        renamed[f"{prefix}.{proj}"] = mx.stack([renamed.pop(f"{prefix}.{e}.{proj}.weight") for e in range(8)])
    ids = mx.array(reference_ids("nemotron_h"))
    assert_close(_save_variant(tmp_path, "nemotron_h", renamed), loaded("nemotron_h")(ids), "nemotron_h, 5.x names", 0)

    weights = dict(mx.load(str(FIXTURES / "jamba" / "model.safetensors")))
    for layer in (1, 3):
        prefix = f"model.layers.{layer}.feed_forward.experts"
        stacked = {p: mx.stack([weights.pop(f"{prefix}.{e}.{p}.weight") for e in range(4)])
                   for p in ("gate_proj", "up_proj", "down_proj")}
        weights[f"{prefix}.gate_up_proj"] = mx.concatenate([stacked["gate_proj"], stacked["up_proj"]], axis=1)
        weights[f"{prefix}.down_proj"] = stacked["down_proj"]
    ids = mx.array(reference_ids("jamba"))
    assert_close(_save_variant(tmp_path, "jamba", weights), loaded("jamba")(ids), "jamba, fused experts", 0)


# --- errors and the CLI -------------------------------------------------------------------------

MALFORMED = [
    ("jamba", {"attn_layer_offset": 4}, "attn_layer_offset"),
    ("jamba", {"expert_layer_period": 0}, "expert_layer_period"),
    ("jamba", {"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ("jamba", {"num_experts": 0}, "num_experts"),
    ("jamba", {"mamba_dt_rank": "big"}, "mamba_dt_rank"),
    ("jamba", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("jamba", {"hidden_act": "gelu"}, "hidden_act"),
    ("jamba", {"mamba_d_state": "16"}, "mamba_d_state"),
    ("nemotron_h", {"layers_block_type": None}, "layers_block_type"),
    ("nemotron_h", {"layers_block_type": ["linear_attention", "moe", "sliding_attention", "mlp"]},
     "layers_block_type"),
    ("nemotron_h_hf4", {"num_hidden_layers": 5}, "num_hidden_layers"),
    ("nemotron_h_hf4", {"hybrid_override_pattern": "ME*X"}, "hybrid_override_pattern"),
    ("nemotron_h", {"n_groups": 3}, "n_groups"),
    ("nemotron_h", {"n_group": 3}, "n_group"),
    ("nemotron_h", {"topk_group": 3}, "topk_group"),
    ("nemotron_h", {"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ("nemotron_h", {"n_routed_experts": None}, "n_routed_experts"),
    ("nemotron_h", {"mamba_hidden_act": "gelu"}, "mamba_hidden_act"),
    ("nemotron_h", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("nemotron_h", {"moe_latent_size": 1.5}, "moe_latent_size"),
    ("nemotron_h", {"mlp_hidden_act": "relu3"}, "mlp_hidden_act"),
    ("nemotron_h_dense", {"intermediate_size": None}, "intermediate_size"),
]


@pytest.mark.parametrize("name,changes,field", MALFORMED, ids=[f"{n}-{f}" for n, _, f in MALFORMED])
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
    assert "\n" not in message and field in message and message.startswith("config.json: "), message


# A config whose layer pattern or state sizes disagree with the checkpoint: the first tensor that
# does not fit is named, with its layer.
MISMATCHED = [
    ("jamba", {"attn_layer_offset": 2}, ["model.layers.1.mamba."]),  # layer 1 is attention in the weights
    ("jamba", {"expert_layer_offset": 0}, ["model.layers.0.feed_forward."]),
    ("jamba", {"mamba_d_state": 16}, [".mamba.", "has shape", "the config implies"]),
    ("nemotron_h", {"layers_block_type": ["linear_attention", "full_attention", "moe", "mlp"]},
     ["backbone.layers.1.mixer."]),
    ("nemotron_h_hf4", {"hybrid_override_pattern": "ME*M"}, ["backbone.layers.3.mixer."]),
    ("nemotron_h", {"ssm_state_size": 8}, ["backbone.layers.0.mixer.", "shape"]),
]


@pytest.mark.parametrize("name,changes,needles", MISMATCHED, ids=[f"{n}-{next(iter(c))}" for n, c, _ in MISMATCHED])
def test_checkpoint_that_disagrees_with_its_config_names_layer_and_tensor(tmp_path, capsys, name, changes, needles):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / name, bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(changes)
    (bad / "config.json").write_text(json.dumps(config))
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_orchard_run_works(name, capsys):
    from app.main import main

    code = main(["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    # The char tokenizer maps ids 0-127 to ASCII: five greedy tokens are at most five characters.
    assert len(captured.out.rstrip("\n")) <= 5
