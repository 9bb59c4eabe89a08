"""Continuous batching (mlxmodels/batch.py, mlxmodels/scheduler.py) against generation alone.

The reference is `stream_generate` on one sequence, whose cached decoding the parity tests check
against transformers' logits. A batch must give every request the same greedy tokens as that: rows
of different lengths (left padding and per-row positions), sequences joining while others decode,
prompts prefilled in chunks between decode steps, rows leaving. Exact token equality is the right
bar: batching adds masked-out (exactly zero) attention weights and changes how BLAS blocks a product
(~1e-7 relative in float32), far below the margins between the top two logits of these sequences.

Each cache kind is covered by the fixture whose family uses it: growing KV (llama3-v5), sliding window
(mistral-swa, window 8, so rows decode past it), mixed sliding/global (gemma3-v5), chunked attention
(llama4_text), SSM state (mamba2), linear attention beside attention (qwen3_next), attention and SSM in
one layer (falcon_h1), latent attention (kimi_linear, deepseek_v2), short conv (lfm2), stateless
slots (nemotron_h), quantized KV (--kv-bits 8), soft-capping (gemma2) and attention sinks (gpt_oss).
"""

from __future__ import annotations

import random
import threading
import time

import mlx.core as mx
import pytest
from conftest import FIXTURES

import mlxmodels
from mlxmodels.batch import batch_caches, extend_batch, extract_row, select_rows
from mlxmodels.generate import prefill, stream_generate
from mlxmodels.prefix_cache import PrefixCache
from mlxmodels.sampling import SamplingParams
from mlxmodels.scheduler import Busy, Request, Scheduler

KINDS = ["llama3-v5", "mistral-swa", "gemma3-v5", "llama4_text", "mamba2", "qwen3_next", "falcon_h1",
         "kimi_linear", "deepseek_v2", "lfm2", "nemotron_h", "gemma2", "gpt_oss", "phi3_longrope"]
# Fixtures whose head dims a quantized KV cache takes (a multiple of 32), one per attention kind.
QUANTIZED_KINDS = ["gpt_oss", "falcon_h1", "deepseek_v2", "llama4_text"]
LENGTHS = (1, 7, 13, 3, 20, 9)  # prompt lengths: padding of every size, a 1-token prompt with no prefill
MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module", params=KINDS)
def fixture_model(request):
    return request.param, *mlxmodels.load(FIXTURES / request.param)


def prompts(seed: int = 2) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, 120) for _ in range(n)] for n in LENGTHS]


def alone(model, tokenizer, ids, cache=None, max_tokens=MAX_TOKENS, **kwargs):
    """(tokens, text, stats) of one generation by itself."""
    pieces, stats = [], None
    for chunk in stream_generate(model, tokenizer, ids, max_tokens=max_tokens, cache=cache, **kwargs):
        pieces.append(chunk.text)
        stats = chunk.stats or stats
    return stats.tokens, "".join(pieces), stats


def run(scheduler, requests, arrive_at=None):
    """Drive the scheduler step by step; request i is submitted at step arrive_at[i]. Returns each
    request's outputs."""
    arrive_at = arrive_at or [0] * len(requests)
    outputs = {i: [] for i in range(len(requests))}
    step = 0
    while not all(outs and outs[-1].finish_reason for outs in outputs.values()):
        for i, request in enumerate(requests):
            if arrive_at[i] == step:
                scheduler.submit(request, outputs[i].append)
        scheduler.step()
        step += 1
        assert step < 10_000
    return [outputs[i] for i in range(len(requests))]


def tokens_of(outputs) -> list[int]:
    return [t for o in outputs for t in o.tokens]


def text_of(outputs) -> str:
    return "".join(o.text for o in outputs)


def test_batched_greedy_equals_alone(fixture_model):
    """Six prompts of lengths 1-20 arriving at different steps, 4 at a time, prefilled 4 tokens per
    step between decode steps: each gets exactly its tokens and text alone, and so does the same set
    again, now reusing the prefix cache."""
    name, model, tokenizer = fixture_model
    # Prefilled in the same chunks alone: LongRoPE (phi3_longrope) picks its factors per call by the
    # length so far, so its results depend on the chunking (as in the reference), not on batching.
    expected = [alone(model, tokenizer, p, prefill_step=4) for p in prompts()]
    scheduler = Scheduler(model, tokenizer, max_batch=4, prefill_step=4, prefix_cache=PrefixCache(1 << 30))
    for round, arrivals in enumerate(([0, 0, 2, 5, 3, 7], None)):
        results = run(scheduler, [Request(p, MAX_TOKENS, GREEDY) for p in prompts()], arrivals)
        for (tokens, text, stats), outputs, p in zip(expected, results, prompts()):
            assert tokens_of(outputs) == tokens, f"{name} round {round}, prompt of {len(p)}"
            assert text_of(outputs) == text
            usage = outputs[-1].usage
            assert usage.completion_tokens == len(tokens) and usage.prompt_tokens == len(p)
            # The second round reuses every prompt but its last token (which the decode step feeds).
            assert usage.cached_tokens == (0 if round == 0 else len(p) - 1)


@pytest.mark.parametrize("name,kv_bits", [(name, 8) for name in QUANTIZED_KINDS] +
                         [(name, 16) for name in QUANTIZED_KINDS if name != "deepseek_v2"])  # MLA: kept as is
def test_quantized_and_float16_kv_caches_batch(name, kv_bits):
    model, tokenizer = mlxmodels.load(FIXTURES / name)
    expected = [alone(model, tokenizer, p, cache=mlxmodels.make_cache(model, kv_bits=kv_bits))[0] for p in prompts()]
    scheduler = Scheduler(model, tokenizer, max_batch=6, prefill_step=5,
                          make_cache=lambda: mlxmodels.make_cache(model, kv_bits=kv_bits))
    stored = set()  # the dtypes of the batch's full-attention buffers after each step
    step = scheduler.step

    def watched_step():
        step()
        for layer in scheduler._batch or []:
            attention = getattr(layer, "attention", layer)  # Falcon-H1: attention beside an SSM
            if type(getattr(attention, "layout", None)).__name__ == "_KVLayout":
                stored.update(a.dtype for a in attention.arrays or [])

    scheduler.step = watched_step
    results = run(scheduler, [Request(p, MAX_TOKENS, GREEDY) for p in prompts()], [0, 1, 1, 4, 2, 0])
    assert [tokens_of(r) for r in results] == expected
    if kv_bits == 16:
        # One-token prompts join with empty caches: the batch's first buffers are made from a decode
        # step's new keys and values, in halves too.
        run(scheduler, [Request(p[:1], 2, GREEDY) for p in prompts(3)])
        assert stored == {mx.float16}


def test_both_cpu_math_paths(monkeypatch):
    """MLX's own attention and RoPE ops (what Metal and CUDA run) batch as well as the CPU math."""
    monkeypatch.setenv("ORCHARD_CPU_MATH", "mlx")
    for name in ("gemma3-v5", "llama4_text", "gpt_oss"):
        model, tokenizer = mlxmodels.load(FIXTURES / name)
        expected = [alone(model, tokenizer, p)[0] for p in prompts(5)]
        results = run(Scheduler(model, tokenizer, max_batch=6, prefill_step=6),
                      [Request(p, MAX_TOKENS, GREEDY) for p in prompts(5)])
        assert [tokens_of(r) for r in results] == expected, name


def test_default_model_batch_of_eight(default_model):
    """SmolLM2-135M, real weights: eight chat prompts decoded together give each its answer alone."""
    from mlxmodels.generate import encode_prompt
    from mlxmodels.prompt import format_messages

    model, tokenizer = default_model
    questions = ["What is the capital of France?", "Name a colour.", "Say hello.", "What is 2+2?",
                 "Write one word about the sea.", "Who wrote Hamlet?", "Define gravity briefly.", "Count to three."]
    ids = [encode_prompt(tokenizer, format_messages(tokenizer, [{"role": "user", "content": q}])) for q in questions]
    expected = [alone(model, tokenizer, p, max_tokens=6)[1] for p in ids]
    results = run(Scheduler(model, tokenizer, max_batch=8, prefill_step=16),
                  [Request(p, 6, GREEDY) for p in ids], [0, 0, 1, 1, 2, 3, 5, 8])
    assert [text_of(r) for r in results] == expected


class Counting:
    """A model that records the shape of every input it is called on."""

    def __init__(self, inner):
        self.inner, self.info, self.calls = inner, inner.info, []

    def __call__(self, inputs, cache=None):
        self.calls.append(tuple(inputs.shape))
        return self.inner(inputs, cache)

    def make_cache(self):
        return self.inner.make_cache()

    def named_modules(self):
        return self.inner.named_modules()


def test_decode_step_is_one_model_call_on_all_rows():
    """The weights are read once per step for the whole batch: each decode step is a single model call
    on [B, 1] inputs (B = the running rows), never one call per row."""
    model, tokenizer = mlxmodels.load(FIXTURES / "llama3-v5")
    counting = Counting(model)
    calls = counting.calls
    scheduler = Scheduler(counting, tokenizer, max_batch=4, prefill_step=64)
    steps = []
    original = scheduler._launch

    def launch():
        before = len(calls)
        result = original()
        steps.append(calls[before:])
        return result

    scheduler._launch = launch
    run(scheduler, [Request(p, 6, GREEDY) for p in prompts()[1:5]])
    decodes = [[shape for shape in step if shape[1] == 1] for step in steps]
    assert all(len(step) <= 1 for step in decodes)  # at most one decode call per step...
    assert max(step[0][0] for step in decodes if step) == 4  # ...on all the running rows at once


@pytest.mark.parametrize("name, lengths, passes", [
    ("llama3-v5", (12, 15, 13, 14), [(4, 14)]),  # padding dropped from each row's cache afterwards
    ("mamba2", (13, 13, 9, 13), [(2, 12), (1, 8), (1, 12)]),  # a recurrent state cannot drop padding
])
def test_prompts_arriving_together_prefill_in_one_pass(name, lengths, passes):
    """Prompts admitted together are prefilled as one batched pass (the weights read once for all),
    and each still gets exactly its answer alone."""
    model, tokenizer = mlxmodels.load(FIXTURES / name)
    rng = random.Random(9)
    ids = [[rng.randrange(4, 120) for _ in range(n)] for n in lengths]
    expected = [alone(model, tokenizer, p)[0] for p in ids]
    counting = Counting(model)
    results = run(Scheduler(counting, tokenizer, max_batch=4, prefill_step=256),
                  [Request(p, MAX_TOKENS, GREEDY) for p in ids])
    assert [tokens_of(r) for r in results] == expected
    assert [shape for shape in counting.calls if shape[1] > 1] == passes


def test_a_burst_of_requests_after_idle_is_prefilled_together():
    """Requests that arrive a little apart after an idle spell (clients started at once, each request
    parsed and tokenized in turn) are gathered into one batched prefill, not the first alone."""
    model, tokenizer = mlxmodels.load(FIXTURES / "llama3-v5")
    rng = random.Random(9)
    ids = [[rng.randrange(4, 120) for _ in range(n)] for n in (12, 15, 13, 14)]
    counting = Counting(model)
    scheduler = Scheduler(counting, tokenizer, max_batch=4, prefill_step=256)
    scheduler.BURST_QUIET, scheduler.BURST_WAIT = 0.2, 5.0  # generous: thread wake-ups on a busy machine
    finished, done = [], threading.Event()

    def on_output(output):
        if output.finish_reason:
            finished.append(output)
            if len(finished) == len(ids):
                done.set()

    scheduler.start()
    try:
        for p in ids:
            scheduler.submit(Request(p, 4, GREEDY), on_output)
            time.sleep(0.02)
        assert done.wait(60)
    finally:
        scheduler.stop(timeout=30)
    # (the warm-up's own 2-token call aside) one pass over all four prompts, up to their last tokens
    assert [shape for shape in counting.calls if shape[1] > 2] == [(4, 14)]


def test_rows_have_their_own_sampling_stops_and_budgets():
    model, tokenizer = mlxmodels.load(FIXTURES / "llama3-v5")
    p = prompts()
    greedy_tokens, greedy_text, _ = alone(model, tokenizer, p[2], max_tokens=MAX_TOKENS)
    stop = greedy_text[3:5]  # a stop string the greedy answer meets at its 4th character
    seeded = SamplingParams(temperature=1.0, top_k=20, seed=7)
    requests = [
        Request(p[2], MAX_TOKENS, GREEDY),
        Request(p[2], MAX_TOKENS, GREEDY, stop=[stop]),
        Request(p[2], 3, GREEDY),
        Request(p[1], MAX_TOKENS, seeded),
        Request(p[4], MAX_TOKENS, SamplingParams(temperature=0.8, top_p=0.9)),
    ]
    results = run(Scheduler(model, tokenizer, max_batch=5, prefill_step=8), requests)
    assert tokens_of(results[0]) == greedy_tokens
    assert text_of(results[1]) == greedy_text[: greedy_text.index(stop)]
    assert results[1][-1].finish_reason == "stop"
    assert tokens_of(results[2]) == greedy_tokens[:3] and results[2][-1].finish_reason == "length"
    # A seeded request draws the same tokens whatever runs beside it.
    again = run(Scheduler(model, tokenizer, max_batch=2, prefill_step=3), [Request(p[1], MAX_TOKENS, seeded)])
    assert tokens_of(again[0]) == tokens_of(results[3])


def test_repetition_penalty_matches_alone():
    model, tokenizer = mlxmodels.load(FIXTURES / "llama3-v5")
    penalised = SamplingParams(temperature=0.0, repetition_penalty=1.5, repetition_context=8)
    expected = [alone(model, tokenizer, p, sampling=penalised)[0] for p in prompts()[1:4]]
    results = run(Scheduler(model, tokenizer, max_batch=3, prefill_step=4),
                  [Request(p, MAX_TOKENS, penalised) for p in prompts()[1:4]])
    assert [tokens_of(r) for r in results] == expected


def test_logprobs_are_the_models():
    """The chosen token's log-probability and the top alternatives come from the model's own logits."""
    model, tokenizer = mlxmodels.load(FIXTURES / "llama3-v5")
    p = prompts()[2]
    results = run(Scheduler(model, tokenizer), [Request(p, 3, GREEDY, logprobs=2)])
    first = results[0][0].logprobs[0]
    cache = model.make_cache()
    logits = model(mx.array([p]), cache)[0, -1].astype(mx.float32)
    reference = (logits - mx.logsumexp(logits)).tolist()
    assert first.token == max(range(len(reference)), key=reference.__getitem__)
    assert first.logprob == pytest.approx(reference[first.token], abs=1e-5)
    assert [t for t, _ in first.top] == sorted(range(len(reference)), key=lambda t: -reference[t])[:2]


def test_cancel_frees_the_row_and_busy_when_full():
    model, tokenizer = mlxmodels.load(FIXTURES / "llama3-v5")
    scheduler = Scheduler(model, tokenizer, max_batch=2, max_queue=1, prefill_step=64)
    outputs = [[], [], []]
    handles = [scheduler.submit(Request(p, 40, GREEDY), outputs[i].append) for i, p in enumerate(prompts()[1:4])]
    with pytest.raises(Busy):
        scheduler.submit(Request(prompts()[4], 4, GREEDY), lambda o: None)
    for _ in range(4):
        scheduler.step()
    assert scheduler.running == 2 and scheduler.load == 3
    scheduler.cancel(handles[0])
    scheduler.step()
    assert outputs[0][-1].finish_reason == "cancelled"
    scheduler.step()  # the waiting request takes the freed slot
    assert scheduler.running == 2 and len(scheduler._rows) + len(scheduler._joining) + len(scheduler._prefilling) == 2


def test_rows_round_trip_through_a_batch():
    """batch_caches / extend_batch / select_rows / extract_row keep each row's cache: a row taken out
    of a batch continues alone exactly as if it had never been batched."""
    model, tokenizer = mlxmodels.load(FIXTURES / "gemma3-v5")
    p = prompts()
    caches = []
    for ids in p[1:4]:
        cache = model.make_cache()
        prefill(model, mx.array(ids + [5], dtype=mx.uint32), cache)
        caches.append(cache)
    batch = batch_caches(caches[:2])
    extend_batch(batch, batch_caches(caches[2:]))
    select_rows(batch, [2, 0])
    row = extract_row(batch, 0)  # p[3]
    assert [layer.offset for layer in row] == [len(p[3])] * len(row)
    expected = model(mx.array([[9]]), caches[2])
    assert mx.array_equal(model(mx.array([[9]]), row), expected)
