"""MoE and Mamba families beyond logit parity (which tests/test_parity.py covers for every fixture).

- The MoE layer's gathered matmuls (sorted and unsorted, float and 4-bit) against the same
  computation written with MLX's plain ops; HF checkpoint layouts (per-expert, fused, quantized
  router) load to the same model.
- The SSM scans (Mamba-1 block scan, Mamba-2 chunked SSD) against the token-by-token recurrence,
  at chunk sizes that do and do not divide the length, with and without a carried state.
- The SSM cache: fixed size, no rewinding, snapshots (`copy`) for prefix reuse, generation.
- 4-bit quantized fixtures load (through loading's quantization predicate) and stay close to float.
- Malformed MoE / SSM configs give one-line errors naming the field; `orchard run` works for each
  new family.

Tolerances: float32 on both sides, differing only in summation order; 1e-5 relative (of the output
scale) is ~10x the rounding noise seen and far below what a wrong index, decay or mask causes.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import FIXTURES
from mlx.utils import tree_flatten
from test_errors import assert_one_line_error, run_cli

import mlxmodels
from mlxmodels.cache import SSMCache, can_trim_cache, copy_cache, trim_cache
from mlxmodels.errors import ConfigError
from mlxmodels.export import save_model_dir
from mlxmodels.layers import moe, ssm
from mlxmodels.models import build_model

TIGHT = 1e-5
FAMILY_FIXTURES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "mamba", "mamba2"]
MOE_FIXTURES = FAMILY_FIXTURES[:4]


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


# --- the MoE layer ----------------------------------------------------------------------------

def naive_moe(layer: moe.SparseMoE, x: mx.array) -> mx.array:
    """Every token through every expert with plain matmuls, then keep the chosen ones."""
    e = layer.experts
    gate, up, down = e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight  # [E, out, in]
    h = nn.silu(mx.einsum("nd,eid->nei", x, gate)) * mx.einsum("nd,eid->nei", x, up)
    every = mx.einsum("nei,edi->ned", h, down)  # [N, E, D]
    probs = mx.softmax(x @ layer.gate.weight.T, axis=-1)
    top = np.argsort(-np.array(probs), axis=-1)[:, : layer.top_k]
    weights = np.take_along_axis(np.array(probs), top, axis=-1)
    if layer.norm_topk_prob:
        weights = weights / weights.sum(-1, keepdims=True)
    chosen = np.take_along_axis(np.array(every), top[..., None], axis=1)
    out = (chosen * weights[..., None]).sum(1)
    if "shared_expert" in layer:
        shared = np.array(layer.shared_expert(x))
        if "shared_expert_gate" in layer:
            shared = shared * np.array(mx.sigmoid(layer.shared_expert_gate(x)))
        out = out + shared
    return out


@pytest.mark.parametrize("tokens", [1, 3, 40], ids=["decode", "few-unsorted", "prefill-sorted"])
@pytest.mark.parametrize("shared", [False, True])
def test_moe_layer_matches_plain_ops(tokens, shared):
    mx.random.seed(tokens)
    layer = moe.SparseMoE(32, 24, num_experts=6, top_k=2, norm_topk_prob=not shared,
                          shared_hidden_dims=16 if shared else 0, shared_gate=shared)
    layer.gate.weight = mx.random.normal(layer.gate.weight.shape)  # decisive routing
    x = mx.random.normal((tokens, 32))
    assert (tokens * 2 >= moe.SORT_THRESHOLD) == (tokens == 40)  # both gather paths are exercised
    assert_close(layer(x), naive_moe(layer, x), f"moe {tokens} tokens")


def grouped_sigmoid_route(logits: np.ndarray, bias: np.ndarray, k: int, groups: int, best_groups: int,
                          normalise: bool, scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """transformers' DeepSeek-V3 / Kimi / Nemotron-H `TopkRouter.forward`, step by step in NumPy."""
    scores = 1 / (1 + np.exp(-logits))
    choice = scores + bias
    N, E = choice.shape
    group_scores = np.sort(choice.reshape(N, groups, E // groups), axis=-1)[..., -2:].sum(-1)
    kept = np.argsort(-group_scores, axis=-1)[:, :best_groups]
    mask = np.zeros((N, groups), dtype=bool)
    np.put_along_axis(mask, kept, True, axis=-1)
    choice = np.where(np.repeat(mask, E // groups, axis=-1), choice, -np.inf)
    indices = np.argsort(-choice, axis=-1)[:, :k]
    weights = np.take_along_axis(scores, indices, axis=-1)
    if normalise:
        weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    return indices, weights * scaling


@pytest.mark.parametrize("groups,best", [(1, 1), (4, 2), (8, 3)])
def test_sigmoid_grouped_routing_matches_the_reference_algorithm(groups, best):
    """DeepSeek-V3 routing: the correction bias steers the choice only, groups limit it; the bias is
    large enough here that choosing by unbiased scores, or ignoring the groups, picks other experts."""
    mx.random.seed(groups)
    layer = moe.SparseMoE(32, 16, num_experts=16, top_k=3, norm_topk_prob=True, scoring="sigmoid",
                          correction_bias=True, n_group=groups, topk_group=best, routed_scaling_factor=2.5)
    layer.gate.weight = mx.random.normal(layer.gate.weight.shape)
    layer.gate.e_score_correction_bias = mx.random.normal((16,)) * 0.5
    x = mx.random.normal((40, 32))
    indices, weights = layer.route(x)
    logits = np.array(x) @ np.array(layer.gate.weight).T
    ref_indices, ref_weights = grouped_sigmoid_route(logits, np.array(layer.gate.e_score_correction_bias), 3,
                                                     groups, best, True, 2.5)
    order, ref_order = np.argsort(np.array(indices), -1), np.argsort(ref_indices, -1)
    np.testing.assert_array_equal(np.take_along_axis(np.array(indices), order, -1),
                                  np.take_along_axis(ref_indices, ref_order, -1))
    assert_close(np.take_along_axis(np.array(weights), order, -1), np.take_along_axis(ref_weights, ref_order, -1),
                 "routing weights")
    unbiased, _ = grouped_sigmoid_route(logits, np.zeros(16), 3, 1, 1, True, 2.5)
    assert (np.sort(unbiased, -1) != np.sort(ref_indices, -1)).any()  # the bias and groups mattered


def test_quantized_experts_use_gather_qmm_per_expert():
    mx.random.seed(0)
    layer = moe.SwitchGLU(64, 32, num_experts=4)
    x = mx.random.normal((20, 64))
    idx = mx.random.randint(0, 4, (20, 2))
    nn.quantize(layer, group_size=32, bits=4)
    assert isinstance(layer.gate_proj, moe.QuantizedSwitchLinear)
    assert layer.gate_proj.scales.shape == (4, 32, 2)  # per expert, per row, per group of 32

    def dequantized(q):
        return mx.dequantize(q.weight, q.scales, q.biases, q.group_size, q.bits)

    # The same experts with their dequantized weights in float: gather_qmm must equal gather_mm.
    float_layer = moe.SwitchGLU(64, 32, num_experts=4)
    for name in ("gate_proj", "up_proj", "down_proj"):
        getattr(float_layer, name).weight = dequantized(getattr(layer, name))
    for rows in (x[:1], x):  # decode (unsorted) and prefill (sorted)
        n = rows.shape[0]
        assert_close(layer(rows, idx[:n]), float_layer(rows, idx[:n]), f"quantized experts, {n} rows", 1e-4)


def _fused(weights: dict) -> dict:
    """The fixture's per-expert tensors rewritten the way transformers 5 holds them in memory."""
    out, experts = {}, {}
    for k, v in weights.items():
        if ".experts." in k:
            prefix, rest = k.split(".experts.")
            e, proj, _ = rest.split(".")
            experts.setdefault(prefix, {}).setdefault(proj, {})[int(e)] = v
        else:
            out[k] = v
    for prefix, projs in experts.items():
        stack = {p: mx.stack([d[e] for e in sorted(d)]) for p, d in projs.items()}
        out[f"{prefix}.experts.gate_up_proj"] = mx.concatenate([stack["gate_proj"], stack["up_proj"]], axis=1)
        out[f"{prefix}.experts.down_proj"] = stack["down_proj"]
    return out


def test_fused_expert_checkpoint_loads_the_same_model(tmp_path, loaded):
    src = FIXTURES / "qwen3_moe"
    weights = mx.load(str(src / "model.safetensors"))
    fused = tmp_path / "fused"
    fused.mkdir()
    mx.save_safetensors(str(fused / "model.safetensors"), _fused(weights))
    shutil.copy(src / "config.json", fused / "config.json")
    ids = mx.array(reference_ids("qwen3_moe"))
    assert_close(mlxmodels.load_model(fused)(ids), loaded("qwen3_moe")(ids), "fused experts", 0)


# --- the SSM scans ----------------------------------------------------------------------------

def test_linear_scan_matches_the_recurrence():
    mx.random.seed(1)
    a = mx.random.uniform(0.5, 1.0, (2, 37, 3, 4))
    b = mx.random.normal((2, 37, 3, 4))
    h0 = mx.random.normal((2, 3, 4))
    h, expected = h0, []
    for t in range(37):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    assert_close(ssm.linear_scan(a, b, h0), mx.stack(expected, axis=1), "linear_scan")


@pytest.mark.parametrize("length", [1, 9, 40])  # 40 > SCAN_BLOCK: state carried between blocks
def test_mamba_prefill_matches_token_by_token(length):
    assert 40 > 2 * ssm.SCAN_BLOCK  # the longest case spans several scan blocks
    mx.random.seed(2)
    mixer = ssm.MambaMixer(16, 32, state=8, conv_kernel=4, dt_rank=2, use_bias=False, conv_bias=True)
    x = mx.random.normal((1, length, 16))
    whole = mixer(x, SSMCache())
    cache, steps = SSMCache(), []
    for t in range(length):
        steps.append(mixer(x[:, t : t + 1], cache))
    assert_close(whole, mx.concatenate(steps, axis=1), f"mamba {length} tokens")
    assert cache.offset == length


@pytest.mark.parametrize("chunk", [4, 5, 64])  # divides 20, does not, larger than the prompt
@pytest.mark.parametrize("groups", [1, 2])
def test_mamba2_chunked_scan_matches_token_by_token(chunk, groups):
    mx.random.seed(3)
    mixer = ssm.Mamba2Mixer(16, heads=4, head_dim=8, state=8, groups=groups, conv_kernel=4, chunk_size=chunk,
                            eps=1e-5, use_bias=False, conv_bias=True)
    mixer.dt_bias = mx.random.uniform(-3, 0, (4,))
    x = mx.random.normal((2, 20, 16))
    cache, steps = SSMCache(), []
    for t in range(20):
        steps.append(mixer(x[:, t : t + 1], cache))
    expected = mx.concatenate(steps, axis=1)
    # A prefill split unevenly, so the second scan starts from a carried state mid-chunk.
    split = SSMCache()
    got = mx.concatenate([mixer(x[:, :7], split), mixer(x[:, 7:], split)], axis=1)
    assert_close(got, expected, f"mamba2 chunk {chunk}, groups {groups}")
    assert_close(split.ssm, cache.ssm, "final state")


# --- the SSM cache ----------------------------------------------------------------------------

def test_ssm_cache_has_a_fixed_size_and_cannot_rewind(loaded):
    model = loaded("mamba2")
    cache = model.make_cache()
    assert all(isinstance(c, SSMCache) for c in cache)
    model(mx.array([[5] * 4]), cache=cache)
    size = sum(c.nbytes for c in cache)
    model(mx.array([[7] * 60]), cache=cache)
    assert sum(c.nbytes for c in cache) == size > 0  # the state does not grow with the context
    assert cache[0].offset == 64 and cache[0].mask(3) is None
    assert can_trim_cache(cache, 0) and not can_trim_cache(cache, 1)
    assert not trim_cache(cache, 1) and cache[0].offset == 64


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
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
    assert snapshot[0].offset == 10


def test_generation_with_an_ssm_cache(loaded):
    """Greedy generation (chunked prefill + decode through the SSM cache) picks, at each step, the
    argmax of a fresh full-sequence forward."""
    model = loaded("mamba")
    prompt = [int(t) for t in reference_ids("mamba")[0]]

    class Tok:  # token ids in, ids out: enough for stream_generate
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


# --- quantization -----------------------------------------------------------------------------

def quantize_4bit(model, group_size: int = 32):
    # Routers, conv1d, A_log, D and dt_bias have no to_quantized: nn.quantize cannot touch them.
    nn.quantize(model, group_size=group_size, bits=4,
                class_predicate=lambda _, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0)
    return model


def greedy(model, ids: np.ndarray, n: int) -> list[int]:
    cache = model.make_cache()
    logits = model(mx.array(ids), cache=cache)[:, -1]
    out = []
    for _ in range(n):
        token = mx.argmax(logits, axis=-1)
        out.append(token.item())
        logits = model(token[None], cache=cache)[:, -1]
    return out


@pytest.mark.parametrize("name", FAMILY_FIXTURES)
def test_4bit_quantized_fixture_loads_and_stays_close(name, tmp_path, loaded):
    ids = reference_ids(name)
    q = quantize_4bit(mlxmodels.load_model(FIXTURES / name))
    kinds = {type(m).__name__ for _, m in q.named_modules()}
    assert "QuantizedLinear" in kinds
    if name in MOE_FIXTURES:
        assert "QuantizedSwitchLinear" in kinds and "SwitchLinear" not in kinds
        assert q.layers[0].mlp.gate.weight.dtype == mx.float32  # the router stayed in float
    else:
        mixer = q.layers[0].mixer
        assert isinstance(mixer.conv1d, nn.Conv1d) and mixer.A_log.dtype == mx.float32

    # Saved with a `quantization` block, it loads through loading.apply_quantization. MoE experts
    # are saved under mlx-lm's name for them (`switch_mlp`), as MLX-format checkpoints have them.
    config = json.loads((FIXTURES / name / "config.json").read_text())
    config["quantization"] = {"group_size": 32, "bits": 4}
    saved = {k.replace(".experts.", ".switch_mlp."): v for k, v in tree_flatten(q.parameters())}
    save_model_dir(tmp_path / "q4", config, saved)
    reloaded = mlxmodels.load_model(tmp_path / "q4", cpu_weights="mlx")
    assert_close(reloaded(mx.array(ids)), q(mx.array(ids)), f"{name} reloaded 4-bit", 0)

    f = loaded(name)
    float_logits, q_logits = np.array(f(mx.array(ids))), np.array(q(mx.array(ids)))
    teacher_forced = float((float_logits.argmax(-1) == q_logits.argmax(-1)).mean())
    free_float, free_q = greedy(f, ids, 16), greedy(q, ids, 16)
    free_running = float(np.mean(np.array(free_float) == np.array(free_q)))
    print(f"{name} 4-bit greedy agreement: {teacher_forced:.2f} per position on the reference text, "
          f"{free_running:.2f} over 16 free-running tokens")
    # Random tiny models have flat logits (std ~1 over 128 tokens), so 4-bit noise flips close
    # calls, and once a free-running sequence differs it diverges: measured 0.67-0.83 per
    # position. Chance is 1/128; a broken quantized path (wrong expert, scales) lands near it.
    assert teacher_forced >= 0.5


def test_quantized_router_in_a_checkpoint_is_dequantized(tmp_path, loaded):
    """mlx-lm's default recipe quantizes routers too; they are computed in float here."""
    src = FIXTURES / "olmoe"
    weights = dict(mx.load(str(src / "model.safetensors")))
    key = "model.layers.0.mlp.gate.weight"
    w, scales, biases = mx.quantize(weights[key], 32, 8)
    weights[key], weights[key.replace("weight", "scales")], weights[key.replace("weight", "biases")] = w, scales, biases
    out = tmp_path / "qrouter"
    out.mkdir()
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    config = json.loads((src / "config.json").read_text())
    config["quantization"] = {"group_size": 32, "bits": 8}
    (out / "config.json").write_text(json.dumps(config))
    model = mlxmodels.load_model(out)
    router = model.layers[0].mlp.gate
    assert isinstance(router, moe.Router)
    assert_close(router.weight, mx.dequantize(w, scales, biases, 32, 8), "dequantized router", 0)


# --- errors and the CLI -----------------------------------------------------------------------

MALFORMED = [
    ("mixtral", {"num_experts_per_tok": 5}, "num_experts_per_tok"),
    ("qwen2_moe", {"num_experts": None}, "num_experts"),
    ("qwen2_moe", {"shared_expert_intermediate_size": None}, "shared_expert_intermediate_size"),
    ("qwen3_moe", {"num_local_experts": 0}, "num_local_experts"),
    ("olmoe", {"num_experts_per_tok": "two"}, "num_experts_per_tok"),
    ("mamba", {"state_size": None}, "state_size"),
    ("mamba", {"time_step_rank": -1}, "time_step_rank"),
    ("mamba2", {"n_groups": 3}, "n_groups"),
    ("mamba2", {"head_dim": 8}, "num_heads x head_dim"),
    ("mamba2", {"time_step_limit": [0.0]}, "time_step_limit"),
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


def test_malformed_moe_config_on_the_command_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "mixtral", bad)
    config = json.loads((bad / "config.json").read_text())
    config["num_experts_per_tok"] = 9
    (bad / "config.json").write_text(json.dumps(config))
    code, err = run_cli(capsys, "--model", str(bad), "--prompt", "hi")
    assert_one_line_error(code, err, "num_experts_per_tok", "9", str(bad / "config.json"))


@pytest.mark.parametrize("name", FAMILY_FIXTURES)
def test_orchard_run_works_for_every_new_family(name, capsys):
    from app.main import main

    code = main(["run", "--model", str(FIXTURES / name), "--prompt", "hi", "--temp", "0", "--max-tokens", "5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "generation: " in captured.err and "Traceback" not in captured.err
    # The char tokenizer maps ids 0-127 to ASCII: five greedy tokens are at most five characters
    # (fewer if the model emits EOS, id 3).
    assert len(captured.out.rstrip("\n")) <= 5


def test_fixtures_cover_every_new_family_in_both_dialects():
    def model_type(d):
        return json.loads((d / "config.json").read_text())["model_type"]

    made = {d.name: model_type(d) for d in FIXTURES.iterdir() if (d / "reference.npz").is_file()}
    for name in FAMILY_FIXTURES:
        assert made.get(name) == name, f"no parity fixture for {name}"
    for name in MOE_FIXTURES + ["mamba2"]:
        assert made.get(f"{name}_hf4") == name, f"no transformers 4.x dialect fixture for {name}"
    assert "rope_theta" in json.loads((FIXTURES / "mixtral_hf4" / "config.json").read_text())
    assert "num_experts" in json.loads((FIXTURES / "qwen3_moe_hf4" / "config.json").read_text())
    assert "num_local_experts" in json.loads((FIXTURES / "qwen3_moe" / "config.json").read_text())
