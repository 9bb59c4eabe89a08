"""Falcon-H1 and Granite 4.0 hybrid beyond logit parity (tests/test_parity.py covers every fixture).

- The Mamba-2 mixer with Falcon-H1's options (no output norm, norm before the gate, muP multipliers
  on the in_proj segments, a separate out_proj bias): chunked prefill against the token-by-token
  recurrence, at chunk sizes that do and do not divide the length, with and without a carried state.
- Caches: Falcon-H1's per-layer `AttentionSSMCache` (KV cache + SSM state) honours the common
  interface (offset, no rewinding, snapshots, `--kv-bits` swapping its attention part); Granite's
  cache follows `layer_types`; the SSM parts keep a fixed size.
- Checkpoint layouts: transformers 5's fused experts and mlx-lm's names (with its 8-bit router) load
  to the same model; a config whose layer pattern or sizes disagree with the tensors fails naming them.
- Malformed configs give one-line errors naming the field; `orchard run` works on every fixture.

Tolerances: float32 on both sides of each comparison, differing only in summation order; 1e-5 of
the output scale is ~10x the rounding noise seen, far below what a wrong decay, gate or index causes.
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
from mlxmodels.cache import (AttentionSSMCache, KVCache, QuantizedKVCache, SSMCache, can_trim_cache, cache_state,
                             copy_cache, trim_cache)
from mlxmodels.errors import ConfigError
from mlxmodels.layers import moe, ssm
from mlxmodels.models import build_model

TIGHT = 1e-5
FALCON = ["falcon_h1", "falcon_h1_gated", "falcon_h1_hf4"]
GRANITE = ["granitemoehybrid", "granitemoehybrid_dense", "granitemoehybrid_hf4"]


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


# --- the mixer with Falcon-H1's options -------------------------------------------------------

@pytest.mark.parametrize("chunk", [4, 5, 64])  # divides 20, does not, larger than the prompt
@pytest.mark.parametrize("gate_norm", [None, "norm_then_gate", "gate_then_norm"])
def test_falcon_mixer_chunked_prefill_matches_token_by_token(chunk, gate_norm):
    mx.random.seed(5)
    mixer = ssm.Mamba2Mixer(16, heads=4, head_dim=8, state=8, groups=2, conv_kernel=4, chunk_size=chunk, eps=1e-5,
                            use_bias=True, conv_bias=True, gate_norm=gate_norm,
                            projection_multipliers=(0.5, 1.5, 0.7, 2.0, 0.3), out_bias=False)
    mixer.dt_bias = mx.random.uniform(-3, 0, (4,))
    assert "bias" not in mixer.out_proj and "bias" in mixer.in_proj
    assert ("norm" in mixer) == (gate_norm is not None)
    x = mx.random.normal((2, 20, 16))
    cache, steps = SSMCache(), []
    for t in range(20):
        steps.append(mixer(x[:, t : t + 1], cache))
    expected = mx.concatenate(steps, axis=1)
    assert_close(mixer(x), expected, f"whole prefill, chunk {chunk}, {gate_norm}")
    # A prefill split unevenly, so the second scan starts from a carried state mid-chunk.
    split = SSMCache()
    got = mx.concatenate([mixer(x[:, :7], split), mixer(x[:, 7:], split)], axis=1)
    assert_close(got, expected, f"split prefill, chunk {chunk}, {gate_norm}")
    assert_close(split.ssm, cache.ssm, "final state")


def test_projection_multipliers_scale_the_in_proj_segments():
    """(z, x, B, C, dt) = in_proj(x) segments times their multipliers: the same mixer with the
    multipliers folded into in_proj's rows (bias included) computes the same output."""
    mx.random.seed(6)
    multipliers = (0.5, 1.5, 0.7, 2.0, 0.3)
    kwargs = dict(heads=4, head_dim=8, state=8, groups=2, conv_kernel=4, chunk_size=5, eps=1e-5, use_bias=True,
                  conv_bias=True)
    scaled = ssm.Mamba2Mixer(16, **kwargs, projection_multipliers=multipliers)
    folded = ssm.Mamba2Mixer(16, **kwargs)
    folded.update(scaled.parameters())
    rows = mx.concatenate([mx.full((n,), m) for n, m in zip((32, 32, 16, 16, 4), multipliers)])
    folded.in_proj.weight = scaled.in_proj.weight * rows[:, None]
    folded.in_proj.bias = scaled.in_proj.bias * rows
    x = mx.random.normal((1, 12, 16))
    assert_close(scaled(x), folded(x), "multipliers vs folded rows")


# --- caches -----------------------------------------------------------------------------------

def test_falcon_cache_holds_kv_and_ssm_state_per_layer(loaded):
    model = loaded("falcon_h1")
    cache = model.make_cache()
    assert len(cache) == len(model.layers)
    assert all(isinstance(c, AttentionSSMCache) and type(c.attention) is KVCache and isinstance(c.ssm, SSMCache)
               for c in cache)
    model(mx.array([[5] * 4]), cache=cache)
    ssm_bytes, kv_bytes = cache[0].ssm.nbytes, cache[0].attention.nbytes
    model(mx.array([[7] * 300]), cache=cache)  # past the KV cache's first 256-token buffer
    assert cache[0].ssm.nbytes == ssm_bytes > 0  # the SSM state does not grow with the context
    assert cache[0].attention.nbytes > kv_bytes
    assert cache[0].nbytes == cache[0].ssm.nbytes + cache[0].attention.nbytes
    assert len(cache_state(cache)) == 4  # keys, values, conv window, SSM state
    assert cache[0].offset == cache[0].attention.offset == cache[0].ssm.offset == 304
    assert cache[0].mask(3) == "causal" and cache[0].mask(1) is None
    # Attention could rewind, the SSM state cannot: the layer as a whole refuses, and changes nothing.
    assert can_trim_cache(cache, 0) and not can_trim_cache(cache, 1)
    assert not trim_cache(cache, 1) and cache[0].trim(1) == 0
    assert cache[0].attention.offset == cache[0].ssm.offset == 304


@pytest.mark.parametrize("name", ["granitemoehybrid", "granitemoehybrid_dense"])
def test_granite_cache_follows_layer_types(name, loaded):
    model = loaded(name)
    kinds = json.loads((FIXTURES / name / "config.json").read_text())["layer_types"]
    expected = [SSMCache if k == "linear_attention" else KVCache for k in kinds]
    assert [type(c) for c in model.make_cache()] == expected
    assert {"linear_attention", "full_attention"} == set(kinds)


@pytest.mark.parametrize("name", ["falcon_h1", "granitemoehybrid"])
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
    assert all(c.offset == 10 for c in snapshot)


def test_kv_bits_quantizes_the_attention_part_of_a_falcon_layer(loaded):
    model = loaded("falcon_h1")
    cache = mlxmodels.make_cache(model, kv_bits=8)
    assert all(type(c.attention) is QuantizedKVCache and isinstance(c.ssm, SSMCache) for c in cache)
    ids = reference_ids("falcon_h1")
    got = np.concatenate([np.array(model(mx.array(ids[:, :20]), cache=cache))]
                         + [np.array(model(mx.array(ids[:, t : t + 1]), cache=cache)) for t in range(20, 24)], axis=1)
    assert cache[0].attention.offset == 24
    # 8-bit keys and values (group 32): measured max error 0.2% of the logit scale; 2% leaves room
    # for that, while a cache that dropped or misplaced keys is off by tens of percent.
    assert_close(got, model(mx.array(ids)), "8-bit KV cache", 2e-2)


# --- checkpoint layouts -----------------------------------------------------------------------

def _write(tmp_path, name: str, weights: dict, config: dict):
    out = tmp_path / name
    out.mkdir()
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_transformers5_fused_experts_load_the_same_model(tmp_path, loaded):
    """transformers 5 holds Granite's experts as `experts.gate_up_proj` / `experts.down_proj` and the
    router as `router.weight`; HF files have `input_linear` / `output_linear` / `router.layer`."""
    src = FIXTURES / "granitemoehybrid"
    renames = {".block_sparse_moe.input_linear.weight": ".block_sparse_moe.experts.gate_up_proj",
               ".block_sparse_moe.output_linear.weight": ".block_sparse_moe.experts.down_proj",
               ".block_sparse_moe.router.layer.weight": ".block_sparse_moe.router.weight"}
    weights = {}
    for k, v in mx.load(str(src / "model.safetensors")).items():
        for old, new in renames.items():
            k = k.replace(old, new)
        weights[k] = v
    assert "model.layers.0.block_sparse_moe.experts.gate_up_proj" in weights
    out = _write(tmp_path, "fused", weights, json.loads((src / "config.json").read_text()))
    ids = mx.array(reference_ids("granitemoehybrid"))
    assert_close(mlxmodels.load_model(out)(ids), loaded("granitemoehybrid")(ids), "fused experts", 0)


def test_mlx_lm_layout_with_an_8bit_router_loads(tmp_path, loaded):
    """mlx-lm's Granite names (`switch_mlp`, `router.layer`), its 8-bit router and per-layer override;
    the router is dequantized and computed in float."""
    model = loaded("granitemoehybrid")
    weights, config = {}, json.loads((FIXTURES / "granitemoehybrid" / "config.json").read_text())
    config["quantization"] = {"group_size": 64, "bits": 4}
    for k, v in tree_flatten(model.parameters()):
        k = k.replace(".experts.", ".switch_mlp.").replace(".block_sparse_moe.gate.", ".block_sparse_moe.router.layer.")
        weights[k] = v
    router = "model.layers.0.block_sparse_moe.router.layer"
    w, scales, biases = mx.quantize(weights[f"{router}.weight"], 32, 8)
    weights[f"{router}.weight"], weights[f"{router}.scales"], weights[f"{router}.biases"] = w, scales, biases
    config["quantization"][router] = {"group_size": 32, "bits": 8}
    reloaded = mlxmodels.load_model(_write(tmp_path, "mlx_lm", weights, config))
    gate = reloaded.layers[0].block_sparse_moe.gate
    assert isinstance(gate, moe.Router)
    assert_close(gate.weight, mx.dequantize(w, scales, biases, 32, 8), "dequantized router", 0)
    assert reloaded.layers[1].block_sparse_moe.gate.weight.dtype == mx.float32


@pytest.mark.parametrize("name,changes,tensor", [
    # Granite's pattern swapped: layer 0's checkpoint has a Mamba mixer, the config says attention.
    ("granitemoehybrid", {"layer_types": ["attention", "mamba"]}, "model.layers.0.self_attn"),
    # A Granite config that lost its experts, against MoE weights: the experts are left over.
    ("granitemoehybrid", {"num_local_experts": 0}, ".block_sparse_moe."),
    # Falcon-H1 without the mixer norm against weights that have one.
    ("falcon_h1", {"mamba_rms_norm": False}, "model.layers.0.mamba.norm.weight"),
    # A state size the tensors do not have.
    ("falcon_h1", {"mamba_d_state": 16}, "model.layers.0.mamba"),
])
def test_config_that_disagrees_with_the_tensors_names_them(name, changes, tensor, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / name, bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(changes)
    (bad / "config.json").write_text(json.dumps(config))
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, tensor)


# --- config errors and the CLI ----------------------------------------------------------------

MALFORMED = [
    ("falcon_h1", {"mamba_n_heads": None}, "mamba_n_heads"),
    ("falcon_h1", {"mamba_d_head": 5}, "mamba_d_head"),
    ("falcon_h1", {"mamba_n_groups": 3}, "mamba_n_groups"),
    ("falcon_h1", {"ssm_multipliers": [1.0, 1.0]}, "ssm_multipliers"),
    ("falcon_h1", {"mlp_multipliers": ["a", 1.0]}, "mlp_multipliers"),
    ("falcon_h1", {"key_multiplier": "big"}, "key_multiplier"),
    ("falcon_h1", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("falcon_h1", {"time_step_limit": [0.0]}, "time_step_limit"),
    ("granitemoehybrid", {"layer_types": ["mamba"]}, "layer_types"),
    ("granitemoehybrid", {"layer_types": ["mamba", "conv"]}, "layer_types"),
    ("granitemoehybrid", {"position_embedding_type": "alibi"}, "position_embedding_type"),
    ("granitemoehybrid", {"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ("granitemoehybrid", {"num_local_experts": -1}, "num_local_experts"),
    ("granitemoehybrid", {"mamba_d_head": 16}, "mamba_d_head"),
    ("granitemoehybrid_dense", {"shared_intermediate_size": None}, "shared_intermediate_size"),
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


@pytest.mark.parametrize("name,extra", [(n, []) for n in FALCON + GRANITE] + [("falcon_h1", ["--kv-bits", "8"])])
def test_orchard_run(name, extra, capsys):
    from app.main import main

    code = main(["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    # The char tokenizer maps ids 0-127 to ASCII: five greedy tokens are at most five characters.
    assert len(captured.out.rstrip("\n")) <= 5
