"""Speculative decoding in `orchard serve`: per request, with batching (issue 18's serve part).

The reference for every answer is the same request with speculation off (`"speculative": false`),
which tests/test_serve.py and tests/test_batch.py tie to plain generation alone. Greedy answers must
be identical token for token: a verification pass only adds rows to the batch's forward pass, and
the accepted tokens are the target's own argmax. Scheduler-level tests drive fixtures of every cache
kind (growing / sliding / chunked / latent KV, SSM, linear attention, both in one layer, stateless
slots) through mixed batches; server tests use the official `openai` client on SmolLM2 and on the
hybrid Qwen3-Next fixture (Gated DeltaNet recurrent state beside attention).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import FIXTURES
from test_batch import alone, run, text_of, tokens_of
from test_serve import Server

import mlxmodels
from mlxmodels.prefix_cache import PrefixCache
from mlxmodels.proposers import DraftModel, MTPHeads, PromptLookup
from mlxmodels.sampling import SamplingParams
from mlxmodels.scheduler import Request, Scheduler
from mlxmodels.speculative import SpeculativeDecoder

GREEDY = SamplingParams(temperature=0.0)
# phi3_longrope is left out: LongRoPE picks its factors per call from the length reached, so a
# verification pass over several tokens legitimately differs from one-token steps (as in
# speculative.py alone).
KINDS = ["llama3-v5", "mistral-swa", "gemma3-v5", "llama4_text", "mamba2", "qwen3_next", "falcon_h1",
         "kimi_linear", "deepseek_v2", "lfm2", "nemotron_h", "gemma2", "gpt_oss"]
COPY = ("Copy this text exactly:\n\nMargaret had lived in the small house at the end of Willow Lane for almost "
        "forty years. Every morning she woke before sunrise, put the kettle on the old iron stove, and stepped "
        "outside to feed the chickens that wandered freely around the garden.")


def repetitive_prompts(seed: int = 3) -> list[list[int]]:
    """Prompts that repeat themselves (so lookup guesses), of lengths 1-20: padding of every size."""
    rng = random.Random(seed)
    out = []
    for n in (1, 7, 13, 3, 20, 9):
        base = [rng.randrange(4, 120) for _ in range(max(1, n // 2))]
        out.append((base * 3)[:n])
    return out


def lookup(n: int = 2, k: int = 4) -> SpeculativeDecoder:
    return SpeculativeDecoder(PromptLookup(n), k)


# -- the scheduler, on fixtures ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", KINDS)
def test_mixed_batch_with_speculating_rows_equals_alone(name):
    """Six requests arriving at different steps, 4 at a time: first every other one speculating, then
    all, the second round reusing the prefix cache. Each gets exactly its tokens and text alone."""
    model, tokenizer = mlxmodels.load(FIXTURES / name)
    prompts = repetitive_prompts()
    expected = [alone(model, tokenizer, p, max_tokens=16, prefill_step=4)[:2] for p in prompts]
    scheduler = Scheduler(model, tokenizer, max_batch=4, prefill_step=4, prefix_cache=PrefixCache(1 << 30))
    guessed = 0
    for round in range(2):
        requests = [Request(p, 16, GREEDY, speculative=lookup() if i % 2 == 0 or round else None)
                    for i, p in enumerate(prompts)]
        results = run(scheduler, requests, [0, 0, 2, 5, 3, 7])
        for (tokens, text), outputs, request in zip(expected, results, requests):
            assert (tokens_of(outputs), text_of(outputs)) == (tokens, text), f"{name} round {round}"
            usage = outputs[-1].usage
            assert (usage.draft_tokens is None) == (request.speculative is None)
            guessed += usage.draft_tokens or 0
    assert guessed > 0


@pytest.mark.parametrize("name", ["gpt_oss", "falcon_h1", "deepseek_v2", "llama4_text"])
def test_speculating_rows_with_a_quantized_kv_cache(name):
    """--kv-bits 8 (quantized KV and latent caches, beside an SSM in falcon_h1): a batch of
    speculating rows gives each its tokens alone with the same cache kind."""
    model, tokenizer = mlxmodels.load(FIXTURES / name)
    prompts = repetitive_prompts()
    expected = [alone(model, tokenizer, p, max_tokens=12, cache=mlxmodels.make_cache(model, kv_bits=8))[0]
                for p in prompts]
    scheduler = Scheduler(model, tokenizer, max_batch=6, prefill_step=5,
                          make_cache=lambda: mlxmodels.make_cache(model, kv_bits=8))
    results = run(scheduler, [Request(p, 12, GREEDY, speculative=lookup()) for p in prompts], [0, 1, 1, 4, 2, 0])
    assert [tokens_of(r) for r in results] == expected
    assert sum(r[-1].usage.draft_tokens for r in results) > 0


def test_draft_model_and_mtp_rows_in_a_batch():
    """The other two proposers per row: a draft model (its own cache per request) on the hybrid
    fixture, and the model's MTP layer (fed each row's hidden states from the batched pass)."""
    for name, proposer in (("qwen3_next", DraftModel(mlxmodels.load_model(FIXTURES / "llama3-v5"))),
                           ("deepseek_v3_mtp", None)):
        model, tokenizer = mlxmodels.load(FIXTURES / name)
        proposer = proposer or MTPHeads(model)
        prompts = repetitive_prompts(5)
        expected = [alone(model, tokenizer, p, max_tokens=12)[0] for p in prompts]
        requests = [Request(p, 12, GREEDY, speculative=SpeculativeDecoder(proposer.fork(), 2)) for p in prompts]
        results = run(Scheduler(model, tokenizer, max_batch=4, prefill_step=6), requests, [0, 0, 1, 3, 2, 4])
        assert [tokens_of(r) for r in results] == expected, name
        assert sum(r[-1].usage.draft_tokens for r in results) > 0


def test_stop_strings_budget_and_logprobs_stay_exact_when_many_tokens_are_accepted():
    """A guess-friendly prompt whose answer repeats: the stop string and max_tokens cut inside an
    accepted run exactly where one-token steps cut, with the same logprobs."""
    model, tokenizer = mlxmodels.load(FIXTURES / "gemma3-v5")  # guesses hold on it (see above)
    prompt = repetitive_prompts()[4]
    tokens, text, _ = alone(model, tokenizer, prompt, max_tokens=16)
    stop = text[5:7]
    cases = [Request(prompt, 9, GREEDY, logprobs=3), Request(prompt, 16, GREEDY, stop=[stop], logprobs=0)]
    for speculate in (False, True):
        requests = [Request(r.prompt, r.max_tokens, r.sampling, r.stop, r.logprobs,
                            speculative=lookup(2, 8) if speculate else None) for r in cases]
        results = run(Scheduler(model, tokenizer, max_batch=4), requests)
        if not speculate:
            reference = results
            assert text_of(results[1]) == text[: text.index(stop)]
            continue
        assert max(len(o.tokens) for r in results for o in r) > 1  # several tokens in one step
        for got, want in zip(results, reference):
            assert (tokens_of(got), text_of(got), got[-1].finish_reason) == \
                   (tokens_of(want), text_of(want), want[-1].finish_reason)
            got_lp = [lp for o in got for lp in o.logprobs]
            want_lp = [lp for o in want for lp in o.logprobs]
            assert [(lp.token, [t for t, _ in lp.top]) for lp in got_lp] == \
                   [(lp.token, [t for t, _ in lp.top]) for lp in want_lp]
            # float32 logits from a pass over several tokens vs one: BLAS blocking differs (~1e-6).
            assert all(abs(a.logprob - b.logprob) < 1e-4 for a, b in zip(got_lp, want_lp))


def test_rows_guess_only_while_the_batch_has_at_most_speculate_up_to_rows():
    model, tokenizer = mlxmodels.load(FIXTURES / "gemma3-v5")
    prompts = repetitive_prompts()[1:5:2]
    guesses, texts = [], []
    for limit in (1, 2):
        requests = [Request(p, 12, GREEDY, speculative=lookup()) for p in prompts]
        results = run(Scheduler(model, tokenizer, max_batch=4, speculate_up_to=limit), requests)
        guesses.append([r[-1].usage.draft_tokens for r in results])
        texts.append([text_of(r) for r in results])
    assert guesses[0] == [0, 0] and min(guesses[1]) > 0 and texts[0] == texts[1]


# -- the server ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm(default_model_dir):
    server = Server(["--model", str(default_model_dir), "--model-name", "smollm2", "--prompt-lookup", "3",
                     "--speculate-up-to", "8", "--quiet"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hybrid():
    """The Qwen3-Next fixture (recurrent Gated DeltaNet state + attention), no speculation flag."""
    server = Server(["--model", str(FIXTURES / "qwen3_next"), "--model-name", "hybrid", "--speculate-up-to", "8",
                     "--quiet"])
    yield server
    server.stop()


def chat(client, content, **kwargs):
    return client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": content}],
                                          temperature=0, **kwargs)


def details(usage):
    d = usage.completion_tokens_details
    return None if d is None else (d.accepted_prediction_tokens, d.rejected_prediction_tokens)


def test_speculating_answer_equals_plain_and_usage_counts_guesses(smollm):
    client = smollm.client()
    plain = chat(client, COPY, max_tokens=40, extra_body={"speculative": False})
    fast = chat(client, COPY, max_tokens=40)  # the server's --prompt-lookup 3
    assert fast.choices[0].message.content == plain.choices[0].message.content
    assert fast.usage.completion_tokens == plain.usage.completion_tokens
    accepted, rejected = details(fast.usage)
    assert accepted > 10 and rejected >= 0
    assert details(plain.usage) is None
    capped = chat(client, COPY, max_tokens=40, extra_body={"speculative": {"num_draft": 2}})
    assert capped.choices[0].message.content == plain.choices[0].message.content
    assert 0 < details(capped.usage)[0] < accepted + 1


def test_mixed_concurrent_batch_on_smollm(smollm):
    """Six requests at once (max concurrency 8): speculating and plain, streaming and not, each equal
    to the same request alone without speculation."""
    client = smollm.client()
    asks = [(COPY, True, False), ("Name three colours.", False, False), (COPY, True, True),
            ("Count from one to ten.", True, True), ("What is the capital of France?", False, True),
            ("Repeat: red green blue red green blue red green blue", True, False)]

    def ask(case, speculate):
        content, _, stream = case
        extra = {"extra_body": {"speculative": speculate}}
        if not stream:
            return chat(client, content, max_tokens=24, **extra).choices[0].message.content
        chunks = chat(client, content, max_tokens=24, stream=True, **extra)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    expected = [ask(case, False) for case in asks]
    with ThreadPoolExecutor(len(asks)) as pool:
        got = list(pool.map(lambda case: ask(case, case[1]), asks))
    assert got == expected


def test_constrained_rows_decode_plainly_beside_speculating_ones(smollm):
    """A `response_format` request does not guess (no completion_tokens_details) and gets the same
    JSON as alone without speculation, while a copying request speculates beside it."""
    client = smollm.client()
    fmt = {"type": "json_object"}
    alone_json = chat(client, "Give a JSON object with a name.", max_tokens=24, response_format=fmt,
                      extra_body={"speculative": False}).choices[0].message.content
    with ThreadPoolExecutor(2) as pool:
        constrained = pool.submit(chat, client, "Give a JSON object with a name.", max_tokens=24, response_format=fmt)
        copying = pool.submit(chat, client, COPY, max_tokens=32)
        constrained, copying = constrained.result(), copying.result()
    assert constrained.choices[0].message.content == alone_json
    assert details(constrained.usage) is None and details(copying.usage)[0] > 0


def test_prediction_on_a_hybrid_model_batched(hybrid):
    """`prediction` (here: the answer itself) on a server without speculation flags, on the recurrent
    hybrid fixture, five requests at once (two predicted, one asking for speculation, two plain):
    identical answers, and the predicted ones keep most guesses."""
    client = hybrid.client()

    def complete(prompt, **extra):
        reply = client.completions.create(model="hybrid", prompt=prompt, max_tokens=24, temperature=0,
                                          extra_body=extra)
        return reply.choices[0].text, reply.usage

    prompts = ["abcabcabc", "hello world", "xyzxyz", "the cat sat", "abababab"]
    plain = [complete(p)[0] for p in prompts]
    extras = [{"prediction": {"type": "content", "content": plain[0]}}, {},
              {"prediction": {"type": "content", "content": [{"type": "text", "text": plain[2]}]}}, {},
              {"speculative": True}]  # prompt lookup, the server having no proposer of its own
    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(lambda i: complete(prompts[i], **extras[i]), range(len(prompts))))
    assert [text for text, _ in got] == plain
    assert [details(usage) is None for _, usage in got] == [False, True, False, True, False]
    assert details(got[0][1])[0] > 10 and details(got[2][1])[0] > 10


@pytest.mark.parametrize("extra,words", [
    ({"speculative": {"num_draft": 0}}, "speculative: Value error, num_draft must be an integer in 1..32, got 0"),
    ({"speculative": {"num_draft": "4"}}, "num_draft must be an integer"),
    ({"speculative": {"n_max": 4}}, "unknown field 'n_max'"),
    ({"speculative": "yes"}, 'must be true, false or {"num_draft": K}'),
    ({"prediction": {"type": "text", "content": "x"}}, "prediction.type"),
    ({"prediction": {"type": "content", "content": "x"}, "speculative": False}, "prediction works by speculative"),
])
def test_bad_speculation_fields_are_a_400_naming_them(hybrid, extra, words):
    body = {"model": "hybrid", "prompt": "abc", "max_tokens": 2, **extra}
    response = httpx.post(f"{hybrid.base}/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["param"].startswith(next(iter(extra)))


def test_serve_refuses_mtp_on_a_model_without_it_in_one_line(capsys):
    from app.main import main

    assert main(["serve", "--model", str(FIXTURES / "llama3-v5"), "--mtp", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("orchard: error: llama3-v5 has no multi-token-prediction layers") and err.count("\n") == 1
