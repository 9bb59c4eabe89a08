"""A model split over 2 ranks (`mx.distributed`, ring backend on localhost) computes what the whole
model computes in one process: full logits, greedy output, in both modes; each rank holds about half
the weights; a rank that dies ends the job with one line.

The ranks run in separate processes started by `mlx.launch` (tests/distributed_worker.py) or by
`orchard run --ranks 2`; the references are computed here, in this process, by the whole model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES, fixture_names

import mlxmodels
from distributed_worker import greedy, prompt_ids

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MLX_LAUNCH = Path(PYTHON).parent / "mlx.launch"
MODES = ("pipeline", "tensor")


def _fixture_models() -> tuple:
    """A dense, an MoE and a hybrid (Gated DeltaNet + gated attention + MoE with a shared expert)
    family; ORCHARD_DISTRIBUTED_ALL=1: every fixture of at least 2 layers (all families; ~75 s more)."""
    if not os.environ.get("ORCHARD_DISTRIBUTED_ALL"):
        return ("llama3-v5", "qwen3_moe", "qwen3_next")
    return tuple(n for n in fixture_names()
                 if json.loads((FIXTURES / n / "config.json").read_text()).get("num_hidden_layers", 2) >= 2)


FIXTURE_MODELS = _fixture_models()
# Tensor parallelism sums partial products of o_proj and down_proj across ranks: the same terms added
# in another order. In float32 that moves each logit by a few ulps of the largest partial sums; over
# SmolLM2's 30 layers the measured worst case is 1.8e-6 of the largest logit, so 1e-5 of it leaves
# room for that and nothing else (a wrong head, expert or vocabulary slice shifts logits by O(1)).
# Pipeline parallelism runs every operation as one process does: its logits must be bit-identical.
TENSOR_TOLERANCE = 1e-5


class _Rank:
    """What the split plans read of a group, for cutting a model in this process (no collective runs)."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size, self.group = rank, size, None


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}


@pytest.fixture(scope="module")
def models(default_model_dir) -> dict:
    return {name: FIXTURES / name for name in FIXTURE_MODELS} | {"smollm2": default_model_dir}


@pytest.fixture(scope="module")
def results(models, tmp_path_factory) -> dict:
    """One 2-rank job computes every model in both modes (starting ranks is the slow part)."""
    out = tmp_path_factory.mktemp("distributed") / "results.npz"
    cmd = [str(MLX_LAUNCH), "-n", "2", "--backend", "ring", PYTHON, str(ROOT / "tests" / "distributed_worker.py"),
           str(out), *map(str, models.values())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env(), cwd=ROOT)
    assert out.is_file(), f"the 2-rank job wrote nothing:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    data = np.load(out)
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def references(models) -> dict:
    refs = {}
    for name, path in models.items():
        model = mlxmodels.load_model(path)
        ids = prompt_ids(path)
        refs[name] = (np.array(model(mx.array(ids))), greedy(model, ids), path.name)
    return refs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [*FIXTURE_MODELS, "smollm2"])
def test_logits_match_one_process(results, references, name, mode):
    expected, _, key = references[name]
    got = results[f"{key}/{mode}/logits"]
    assert got.shape == expected.shape
    if mode == "pipeline":
        np.testing.assert_array_equal(got, expected)
    else:
        error, scale = np.abs(got - expected).max(), np.abs(expected).max()
        assert error <= TENSOR_TOLERANCE * scale, f"max error {error:.3g} vs largest logit {scale:.3g}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [*FIXTURE_MODELS, "smollm2"])
def test_greedy_output_identical(results, references, name, mode):
    _, expected, key = references[name]
    assert results[f"{key}/{mode}/greedy"].tolist() == expected


def test_each_rank_holds_about_half_the_weights(results, references, default_model_dir):
    """SmolLM2-135M (4-bit, 8-bit tied embedding): tensor mode cuts every matrix, embedding included;
    pipeline mode cuts the layers, and both ranks keep the tied embedding (rank 0 looks tokens up,
    rank 1 computes the logits with it)."""
    key = default_model_dir.name
    single = results[f"{key}/single/memory"][0]
    tensor = results[f"{key}/tensor/memory"]  # [rank, (held, peak, peak while cutting)]
    # 9 heads over 2 ranks go 6 + 3, so the halves differ by a few percent.
    assert (tensor[:, 0] <= 0.55 * single).all(), tensor[:, 0] / single
    assert tensor[:, 0].sum() <= 1.01 * single  # nothing but the norms is held twice
    assert (tensor[:, 2] <= 1.01 * tensor[:, 0]).all()  # cutting never held more than the rank's share
    embed = mlxmodels.load_model(default_model_dir).model.embed_tokens
    embed_bytes = sum(v.nbytes for v in (embed["weight"], embed["scales"], embed["biases"]))
    pipeline = results[f"{key}/pipeline/memory"]
    assert (pipeline[:, 0] <= 0.52 * (single - embed_bytes) + embed_bytes).all(), pipeline[:, 0] / single
    assert (pipeline[:, 2] <= 1.01 * pipeline[:, 0]).all()


def _orchard(*args: str) -> list[str]:
    return [PYTHON, "-m", "app.main", *args]


QUESTION = "Name three primary colors."
PROMPT = ["-p", QUESTION, "--max-tokens", "12", "-q"]


@pytest.fixture(scope="module")
def one_process_answer() -> str:
    one = subprocess.run(_orchard("run", *PROMPT), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert one.returncode == 0 and one.stdout.strip(), one.stderr
    return one.stdout


def test_run_with_two_ranks_prints_what_one_process_prints(one_process_answer):
    """Tensor mode here, pipeline in the serve test below (both modes' numbers are checked above)."""
    two = subprocess.run(_orchard("run", *PROMPT, "--ranks", "2", "--parallel", "tensor"), capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert two.returncode == 0, two.stderr
    assert two.stdout == one_process_answer
    assert two.stderr == ""  # -q: nothing from rank 0, and the other rank is silent


def test_serve_with_two_ranks_answers_as_one_process(one_process_answer):
    """The official openai client against `orchard serve --ranks 2` (pipeline parallel): the same
    greedy answer as `orchard run` in one process, plain and streamed; SIGTERM ends every rank."""
    import openai

    server = subprocess.Popen(_orchard("serve", "--port", "0", "-q", "--ranks", "2", "--parallel", "pipeline"),
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        port = None
        for line in server.stderr:
            match = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
            if match:
                port = match.group(1)
                break
        assert port, "the server did not start"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        name = client.models.list().data[0].id
        ask = dict(model=name, messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0)
        answer = client.chat.completions.create(**ask).choices[0].message.content
        streamed = "".join(chunk.choices[0].delta.content or ""
                           for chunk in client.chat.completions.create(**ask, stream=True) if chunk.choices)
    finally:
        server.terminate()
        code = server.wait(timeout=30)
    assert answer == streamed == one_process_answer.removesuffix("\n")
    assert code == 0


@pytest.mark.parametrize("argv, message", [
    (["run", "-p", "hi", "--parallel", "tensor"], "--parallel needs --ranks N (N >= 2) or a start by mlx.launch"),
    (["chat", "--parallel", "tensor"], "--parallel goes with --ranks N"),
    (["chat", "--ranks", "1"], "--ranks must be at least 2 for a distributed chat, got 1"),
])
def test_distributed_flags_that_cannot_apply_are_one_line_errors(capsys, argv, message):
    from app.main import main

    assert main(argv) == 1
    assert capsys.readouterr().err == f"orchard: error: {message}\n"


def test_bad_rank_count_is_one_line():
    proc = subprocess.run(_orchard("run", "-p", "hi", "--ranks", "0"), capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr == "orchard: error: --ranks must be at least 1, got 0\n"


@pytest.mark.parametrize("command", ["run", "serve"])
def test_speculation_is_refused_over_ranks(monkeypatch, command):
    from app import ranks
    from app.main import build_parser
    from mlxmodels.errors import OrchardError

    monkeypatch.setattr(ranks, "GROUP", _Rank(0, 2))
    args = build_parser().parse_args([command, *(["-p", "hi"] if command == "run" else []), "--prompt-lookup", "2"])
    with pytest.raises(OrchardError, match=r"^speculative decoding \(--draft, --prompt-lookup, --mtp\) does not "
                                           r"run over several ranks$"):
        ranks.check_speculative(args)


def test_killing_a_rank_stops_the_server_with_one_line():
    """`orchard serve --ranks 2`: rank 1 killed while a request streams; rank 0 cannot serve without
    it: it ends (status 1) with one line, and the client sees its connection end."""
    import openai

    server = subprocess.Popen(_orchard("serve", "--port", "0", "-q", "--ranks", "2", "--parallel", "tensor"),
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        port = next(m.group(1) for line in server.stderr
                    if (m := re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        stream = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=2000, stream=True,
                                                messages=[{"role": "user", "content": "Count from 1 to 500."}])
        with pytest.raises(openai.APIConnectionError):
            for i, _ in enumerate(stream):
                if i == 4:
                    os.kill(_rank_pids(server.pid)[1], signal.SIGKILL)
                    killed = time.monotonic()
        code = server.wait(timeout=30)
        assert time.monotonic() - killed < 30
        rest = server.stderr.read().splitlines()
    finally:
        if server.poll() is None:
            server.kill()
    assert code == 1
    assert rest[-1].startswith("orchard: error: rank 1 was killed (SIGKILL)"), rest
    assert sum(line.startswith("orchard: error") for line in rest) == 1


def _rank_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the launcher's children, from their environment."""
    pids = {}
    for line in subprocess.run(["ps", "--ppid", str(launcher), "-o", "pid="], capture_output=True,
                               text=True).stdout.split():
        environ = Path(f"/proc/{line}/environ").read_bytes().split(b"\0")
        rank = next(e for e in environ if e.startswith(b"MLX_RANK=")).split(b"=")[1]
        pids[int(rank)] = int(line)
    return pids


@pytest.mark.parametrize("mode", MODES)
def test_killing_a_rank_mid_generation_ends_the_job_with_one_line(mode):
    proc = subprocess.Popen(_orchard("run", "-p", "Count from 1 to 500, one number per line.", "--max-tokens",
                                     "3000", "--ranks", "2", "--parallel", mode),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout.read(12)  # generating
        pid = _rank_pids(proc.pid)[1]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - killed < 30
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchard: error: rank 1 was killed (SIGKILL)"), lines


def test_a_rank_whose_peers_never_answer_stops_with_one_line(tmp_path):
    """A host that is down or unreachable when the job starts: the ring backend would wait forever;
    the join watchdog stops the rank after ORCHARD_JOIN_TIMEOUT seconds with one line."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports]))  # nobody runs rank 1
    env = {**os.environ, "MLX_RANK": "0", "MLX_HOSTFILE": str(hostfile), "ORCHARD_JOIN_TIMEOUT": "2"}
    started = time.monotonic()
    done = subprocess.run(_orchard("run", "-p", QUESTION, "--max-tokens", "3"), capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "rank 0: the other ranks did not answer within 2 s" in lines[0], lines
    env["ORCHARD_JOIN_TIMEOUT"] = "soon"
    bad = subprocess.run(_orchard("run", "-p", QUESTION), capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "orchard: error: ORCHARD_JOIN_TIMEOUT must be a positive number of seconds, got 'soon'"


def test_layer_ranges_follow_each_hosts_memory():
    from mlxmodels.distributed.pipeline import layer_ranges

    assert layer_ranges(30, 2, [16.0, 15.0]) == [(0, 15), (15, 30)]  # alike: an even split
    assert layer_ranges(30, 2, [64.0, 32.0]) == [(0, 20), (20, 30)]
    assert layer_ranges(7, 3, []) == [(0, 3), (3, 5), (5, 7)]


def test_a_cut_inside_a_quantization_group_is_a_one_line_error():
    """qwen3_moe's o_proj reads 4 heads x 16 = 64 inputs: quantized in groups of 64, 2 ranks would
    cut its groups in half."""
    import mlx.nn as nn

    from mlxmodels.distributed import Reader, TensorPlan, Traffic
    from mlxmodels.errors import OrchardError

    model = mlxmodels.load_model(FIXTURES / "qwen3_moe", cpu_weights="mlx")
    nn.quantize(model, group_size=64, bits=4, class_predicate=lambda p, m: isinstance(m, nn.Linear))
    with pytest.raises(OrchardError, match=r"^cannot shard model\.layers\.\d\.self_attn\.o_proj: its inputs "
                                           r"0\.\.32 \(heads 0-1\) would split a quantization group of 64 "
                                           r"\(use --parallel pipeline\)$"):
        TensorPlan(_Rank(0, 2), Traffic()).split(model, Reader())


@pytest.mark.parametrize("heads, kv_heads, ranks, expected", [
    (9, 3, 2, [((0, 6), (0, 2)), ((6, 9), (2, 3))]),  # SmolLM2: KV heads split 2 + 1, their queries follow
    (2, 1, 2, [((0, 1), (0, 1)), ((1, 2), (0, 1))]),  # fewer KV heads than ranks: each keeps the one it reads
    (6, 2, 4, [((0, 2), (0, 1)), ((2, 4), (0, 2)), ((4, 5), (1, 2)), ((5, 6), (1, 2))]),
    (3, 1, 4, [None] * 4),  # fewer heads than ranks: the attention stays whole
])
def test_heads_split_so_each_query_head_keeps_its_kv_head(heads, kv_heads, ranks, expected):
    from types import SimpleNamespace

    from mlxmodels.distributed import TensorPlan, Traffic

    attn = SimpleNamespace(num_heads=heads, num_kv_heads=kv_heads)
    assert [TensorPlan(_Rank(r, ranks), Traffic())._head_ranges(attn) for r in range(ranks)] == expected


def test_bench_reports_each_ranks_memory_and_communication():
    proc = subprocess.run(_orchard("bench", "-p", "8", "-g", "4", "-r", "1", "--no-store", "--json", "--ranks", "2",
                                   "--parallel", "pipeline"), capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["distributed"]
    assert report["ranks"] == 2 and report["parallel"] == "pipeline" and report["layers"] == [[0, 15], [15, 30]]
    for rank, row in enumerate(report["per_rank"]):
        assert row["rank"] == rank
        assert 0.3e8 < row["weight_bytes"] < 0.8e8  # SmolLM2: 98 MB whole, 65 MB per rank
        assert row["peak_memory_bytes"] >= row["weight_bytes"]
        # A decode step sends the 576-float hidden state one hop and sums the 49,152 logits.
        assert row["comm_bytes_per_token"] == 4 * (576 + 49152)
        assert row["comm_ms_per_token"] > 0


@pytest.mark.parametrize("flags, message", [
    (["--synthetic", "smollm2-135m"], "--synthetic does not run over several ranks"),
    (["--compare", "mlx-lm"], "--compare does not run over several ranks"),
    (["--batch", "2"], "--batch does not run over several ranks"),
    (["--prompt-lookup", "2"], "speculative decoding (--draft, --prompt-lookup, --mtp) does not run over several ranks"),
])
def test_bench_refuses_what_does_not_run_over_ranks(monkeypatch, flags, message):
    from app import bench, ranks
    from app.main import build_parser
    from mlxmodels.errors import OrchardError

    monkeypatch.setattr(ranks, "GROUP", _Rank(0, 2))
    args = build_parser().parse_args(["bench", *flags])
    with pytest.raises(OrchardError, match=f"^{re.escape(message)}$"):
        bench._distributed_loader(args)
