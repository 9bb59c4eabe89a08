"""Speculative decoding (mlxmodels/speculative.py, mlxmodels/proposers.py).

The reference is the target model decoding on its own: greedy speculation must give exactly plain
greedy decoding's tokens, on every cache kind (the rollback is where it could go wrong), and sampled
speculation must draw each token from the target's own distribution, computed here in numpy from the
model's logits (a chi-square test). The model paths themselves are checked against transformers in
tests/test_parity.py.
"""

from __future__ import annotations

import json
import math

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES, fixture_names

import mlxmodels
from mlxmodels.cache import cache_offset
from mlxmodels.errors import OrchardError
from mlxmodels.generate import GenerationStats, generate, generate_tokens
from mlxmodels.proposers import DraftModel, MTPHeads, PromptLookup, check_same_vocabulary
from mlxmodels.sampling import SamplingParams
from mlxmodels.speculative import CacheRewind, DraftLength, Proposal, Proposer, SpeculativeDecoder

GREEDY = SamplingParams(temperature=0.0)
PROMPT = [5, 6, 7, 8, 9, 10, 11, 12, 5, 6, 7, 8, 9, 10, 11, 12]  # repeats: prompt lookup has matches
STEPS = 40  # prompt + steps + guesses stay within the fixtures' 64 positions


def one_fixture_per_family() -> list[str]:
    chosen = {}
    for name in fixture_names():
        chosen.setdefault(json.loads((FIXTURES / name / "config.json").read_text())["model_type"], name)
    return sorted(chosen.values())


def take(tokens, n: int) -> list[int]:
    out = [next(tokens) for _ in range(n)]
    tokens.close()
    return out


def plain_greedy(model, cache=None, n: int = STEPS) -> list[int]:
    cache = model.make_cache() if cache is None else cache
    return take(generate_tokens(model, mx.array(PROMPT, dtype=mx.uint32), cache, lambda l: mx.argmax(l, -1), []), n)


def speculative_greedy(model, proposer, cache=None, num_draft=4, n: int = STEPS) -> tuple[list[int], GenerationStats]:
    stats = GenerationStats()
    cache = model.make_cache() if cache is None else cache
    tokens = SpeculativeDecoder(proposer, num_draft).tokens(model, PROMPT, cache, GREEDY, [], stats)
    return take(tokens, n), stats


class Scripted(Proposer):
    """Guesses the known continuation with one guess in each proposal made wrong, at a position that
    cycles through 0..k: every length of accepted prefix, and full acceptance, occurs."""

    def __init__(self, continuation: list[int], prompt_length: int):
        self.continuation, self.prompt_length, self.calls = continuation, prompt_length, 0

    def propose(self, context, k):
        done = len(context) - self.prompt_length
        guesses = list(self.continuation[done : done + k])
        self.calls += 1
        wrong = self.calls % (k + 1)
        if wrong < len(guesses):
            guesses[wrong] = (guesses[wrong] + 1) % 128
        return Proposal(guesses)


# -- greedy: token for token the plain decoder's output, on every cache kind -----------------------

@pytest.mark.parametrize("name", one_fixture_per_family())
def test_greedy_speculation_matches_plain_decoding(name):
    """Each proposer on one fixture of every family (growing, sliding-window, chunked and latent KV
    caches; Mamba, Gated DeltaNet, Kimi Delta and short-conv recurrent states, alone or beside
    attention): the tokens equal plain greedy decoding's exactly. The parity fixtures hold cached
    vs full-sequence logits to ~1e-5, far below these models' top-2 gaps, so ids must match.

    The scripted proposer makes every accepted-prefix length happen; a model drafting for itself
    has every guess accepted; a Mamba-2 draft (its own recurrent cache, restored from snapshots)
    mostly fails; prompt lookup finds the prompt's repeats; MTP blocks run where there are some."""
    model = mlxmodels.load_model(FIXTURES / name)
    reference = plain_greedy(model)
    draft = mlxmodels.load_model(FIXTURES / ("mamba2" if name != "mamba2" else "llama3-v5"))
    proposers = {"scripted": Scripted(reference, len(PROMPT)), "self draft": DraftModel(model),
                 "mamba2 draft": DraftModel(draft), "prompt lookup": PromptLookup(2)}
    if getattr(model, "mtp", None):
        proposers["mtp"] = MTPHeads(model)
    for label, proposer in proposers.items():
        tokens, stats = speculative_greedy(model, proposer)
        assert tokens == reference, f"{name}, {label}: first difference at {_first_difference(tokens, reference)}"
        assert stats.draft_tokens > 0, f"{name}, {label}: nothing was proposed"
        if label == "self draft":
            assert stats.accepted_tokens == stats.draft_tokens
        if label == "scripted":
            assert 0 < stats.accepted_tokens < stats.draft_tokens
            assert stats.target_passes < STEPS


@pytest.mark.parametrize("name", ["olmo2", "deepseek_v3_hf4", "falcon_h1", "qwen3_next"])  # heads of 32
def test_greedy_speculation_with_a_quantized_kv_cache(name):
    """--kv-bits caches (QuantizedKVCache, QuantizedLatentKVCache, inside AttentionSSMCache) trim too."""
    model = mlxmodels.load_model(FIXTURES / name)
    reference = plain_greedy(model, mlxmodels.make_cache(model, kv_bits=8))
    tokens, stats = speculative_greedy(model, Scripted(reference, len(PROMPT)), mlxmodels.make_cache(model, kv_bits=8))
    assert tokens == reference and stats.accepted_tokens > 0


def test_greedy_speculation_on_the_default_model(default_model):
    """SmolLM2-135M (real weights, quantized) rewriting a text: prompt lookup and a draft (here the
    model itself) give plain decoding's text, through stream_generate as `orchard run` calls it."""
    from mlxmodels.prompt import format_messages

    model, tokenizer = default_model
    passage = ("The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of salt "
               "and wind. Every evening the keeper climbed the spiral stairs to light the lamp.")
    prompt = format_messages(tokenizer, [{"role": "user", "content": f"Repeat this text exactly:\n\n{passage}"}])
    text, plain = generate(model, tokenizer, prompt, max_tokens=40)
    # The model drafting for itself costs a decode step per guess: where a pass over k + 1 rows costs
    # more than one row (Orchard's native CPU kernel), the adaptive length rightly stops guessing, so
    # that proposer runs at a fixed length here.
    for proposer, adaptive in ((PromptLookup(3), True), (DraftModel(model), False)):
        spoken, stats = generate(model, tokenizer, prompt, max_tokens=40,
                                 speculative=SpeculativeDecoder(proposer, adaptive=adaptive))
        assert stats.tokens == plain.tokens and spoken == text, proposer.name
        assert stats.accepted_tokens > 0 and stats.tokens_per_pass > 1.5, proposer.name
        assert stats.acceptance_rate == stats.accepted_tokens / stats.draft_tokens


def _first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


# -- sampling: the target's distribution --------------------------------------------------------

SAMPLED = SamplingParams(temperature=1.0, top_k=6)


def _filtered_probs(logits: np.ndarray) -> np.ndarray:
    """Temperature 1, top-6, softmax: SAMPLED's distribution, computed independently in float64."""
    logits = logits.astype(np.float64)
    keep = np.argsort(logits)[-SAMPLED.top_k:]
    out = np.zeros_like(logits)
    out[keep] = np.exp(logits[keep] - logits[keep].max())
    return out / out.sum()


def _joint(model, prompt: list[int]) -> np.ndarray:
    """Exact P(first two tokens) [vocab, vocab] under plain sampling with SAMPLED."""
    first = _filtered_probs(np.array(model(mx.array([prompt]))[0, -1]))
    joint = np.zeros((first.size, first.size))
    for token in np.nonzero(first)[0]:
        second = _filtered_probs(np.array(model(mx.array([prompt + [int(token)]]))[0, -1]))
        joint[token] = first[token] * second
    return joint


def _chi2_pvalue(counts: np.ndarray, expected_probs: np.ndarray) -> float:
    """Pearson's chi-square test of counts against probabilities (cells expecting < 5 pooled); the
    survival function from the regularised incomplete gamma series (scipy is not a dependency)."""
    n = counts.sum()
    expected = expected_probs.ravel() * n
    observed = counts.ravel().astype(np.float64)
    small = expected < 5
    if (expected_probs.ravel()[~small] == 0).any() or (observed[expected_probs.ravel() == 0] > 0).any():
        return 0.0  # a token the distribution cannot produce was produced
    cells_e = np.append(expected[~small], expected[small].sum())
    cells_o = np.append(observed[~small], observed[small].sum())
    if cells_e[-1] == 0:
        cells_e, cells_o = cells_e[:-1], cells_o[:-1]
    statistic = float(((cells_o - cells_e) ** 2 / cells_e).sum())
    a, x = (len(cells_e) - 1) / 2, statistic / 2
    term = total = 1.0 / a
    k = 1
    while term > 1e-17 * total:
        term *= x / (a + k)
        total += term
        k += 1
    return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - math.lgamma(a))) if x > 0 else 1.0


def _sample_pairs(model, proposer, draws: int) -> tuple[np.ndarray, GenerationStats]:
    counts = np.zeros((128, 128), dtype=np.int64)
    stats = GenerationStats()
    decoder = SpeculativeDecoder(proposer, num_draft=2, adaptive=False)  # both tokens from the first pass
    for _ in range(draws):
        first, second = take(decoder.tokens(model, PROMPT[:8], model.make_cache(), SAMPLED, [], stats), 2)
        counts[first, second] += 1
    return counts, stats


class Perturbed:
    """A draft that is the target with a fixed random offset on its logits: its distribution q
    overlaps the target's p without being it, so guesses are accepted and rejected alike."""

    def __init__(self, model, scale: float):
        self.model = model
        self.offset = mx.random.normal((128,), key=mx.random.key(7)) * scale

    def make_cache(self):
        return self.model.make_cache()

    def __call__(self, inputs, cache=None):
        return self.model(inputs, cache) + self.offset


class FixedGuesses(Proposer):
    """Deterministic guesses (as prompt lookup makes): the same two tokens every time."""

    def __init__(self, guesses):
        self.guesses = guesses

    def propose(self, context, k):
        return Proposal(self.guesses[:k])


def test_sampled_speculation_draws_from_the_target_distribution():
    """2000 generations of two tokens (temperature 1, top-k 6) with a draft whose distribution q
    differs from the target's p (guesses are accepted and rejected; the top-6 sets differ, so some
    guesses have p = 0) and with fixed deterministic guesses. The joint distribution of the two
    tokens, both decided by the rejection rule in one pass, must be the target's: Pearson's
    chi-square p-value above 0.001. With the seed fixed the test is deterministic; a correct rule
    fails a given seed with probability 0.001. The same counts must reject the draft's own
    distribution at p < 1e-6, which shows the test has the power to see a wrong rule (accepting
    every guess samples from q)."""
    mx.random.seed(1234)
    target = mlxmodels.load_model(FIXTURES / "llama3-v5")
    draft = Perturbed(target, scale=0.5)
    expected = _joint(target, PROMPT[:8])

    counts, stats = _sample_pairs(target, DraftModel(draft), 2000)
    assert 0.05 < stats.accepted_tokens / stats.draft_tokens < 0.95
    assert _chi2_pvalue(counts, expected) > 1e-3
    assert _chi2_pvalue(counts, _joint(draft, PROMPT[:8])) < 1e-6

    first = int(np.argmax(expected.sum(axis=1)))
    guesses = [first, int(np.argmax(expected[first]))]
    counts, stats = _sample_pairs(target, FixedGuesses(guesses), 2000)
    assert 0.05 < stats.accepted_tokens / stats.draft_tokens < 0.95
    assert _chi2_pvalue(counts, expected) > 1e-3


# -- the parts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama3-v5", "mistral-swa", "llama4_text", "deepseek_v3", "mamba2", "falcon_h1",
                                  "nemotron_h", "lfm2", "kimi_linear", "qwen3_next"])
def test_cache_rewind_equals_a_fresh_prefill(name):
    """After guesses are fed and withdrawn, the cache (trimmed, or restored to its snapshot and fed
    the kept tokens again) continues exactly as the model run on the kept tokens from scratch."""
    model = mlxmodels.load_model(FIXTURES / name)
    cache = model.make_cache()
    model(mx.array([PROMPT[:10]]), cache)
    rewind = CacheRewind(cache)
    rewind.mark()
    model(mx.array([[20, 21, 22, 23]]), cache)  # 2 tokens to keep, 2 guesses to withdraw
    reached = rewind.rewind_to(12)
    kept = PROMPT[:10] + [20, 21]
    assert reached in (10, 12) and cache_offset(cache) == reached
    logits = model(mx.array([kept[reached:] + [30]]), cache)[0, -1]
    fresh = model(mx.array([kept + [30]]))[0, -1]
    assert mx.allclose(logits, fresh, atol=1e-4, rtol=1e-4).item()  # float32, chunked vs whole: ~1e-6


def test_draft_length_adapts_to_acceptance_and_cost():
    high = DraftLength(8)
    for _ in range(20):
        high.record(proposed=8, accepted=8, pass_tokens=9, pass_seconds=0.012, propose_seconds=0.0)
        high.record_plain(0.010)
    assert high.next(room=100) == 8  # cheap guesses, all accepted: ask for the most
    assert high._cost(5) == pytest.approx(0.011)  # pass sizes not measured: interpolated
    low = DraftLength(8)
    for _ in range(20):
        low.record(proposed=4, accepted=0, pass_tokens=5, pass_seconds=0.02, propose_seconds=0.004)
        low.record_plain(0.010)
    assert low.next(room=100) == 0  # every guess rejected and passes cost double: plain decoding
    for _ in range(60):
        low.record_plain(0.010)
    assert low.next(room=100) > 0  # after a while without guesses, try again
    assert high.next(room=3) == 3 and DraftLength(4, adaptive=False).next(room=100) == 4


def test_prompt_lookup_proposes_what_followed_the_latest_longest_match():
    lookup = PromptLookup(ngram=3)
    assert lookup.propose([1, 2, 3, 4, 9, 1, 2, 3, 5, 7, 2, 3], 3).tokens == [5, 7, 2]  # "2 3" latest
    assert lookup.propose([1, 2, 3, 4, 9, 2, 3, 5, 1, 2, 3], 2).tokens == [4, 9]  # "1 2 3" beats "2 3"
    assert lookup.propose([1, 2, 3, 8], 4) == Proposal([])
    assert PromptLookup(ngram=2, min_ngram=2).propose([1, 2, 3, 4, 3], 2) == Proposal([])


def test_stats_and_cache_left_as_plain_decoding_leaves_them():
    """After a speculative generation ends (EOS, limit, stop) the cache holds the prompt and exactly
    the tokens handed out, as plain decoding's does (a chat keeps it), even mid-proposal."""
    model = mlxmodels.load_model(FIXTURES / "qwen3_next")
    reference = plain_greedy(model)
    for n in (1, 5, 6, 7):
        cache = model.make_cache()
        tokens, stats = speculative_greedy(model, Scripted(reference, len(PROMPT)), cache, n=n)
        assert tokens == reference[:n] and cache_offset(cache) == len(PROMPT) + n
        # It continues as a cache fed exactly those tokens from scratch does.
        following = model(mx.array([[reference[n]]]), cache)[0, -1]
        fresh = model(mx.array([PROMPT + reference[: n + 1]]))[0, -1]
        assert mx.allclose(following, fresh, atol=1e-4, rtol=1e-4).item()


def test_chat_session_speculates_and_keeps_reusing_its_cache():
    """A chat with speculation on (prompt lookup, or the model drafting for itself) answers every
    turn as the plain chat does, and its follow-ups read only their new tokens (no snapshot, no reset)."""
    from test_chat_session import FakeTokenizer, answer

    from mlxmodels.chat_session import ChatParams, ChatSession

    model = mlxmodels.load_model(FIXTURES / "qwen3_next")
    sessions = {kind: ChatSession(model, FakeTokenizer(), answer_reserve=6, draft=DraftModel(model),
                                  params=ChatParams(temperature=0.0, max_tokens=6, speculative=kind))
                for kind in ("off", "lookup", "draft")}
    for text in ("hello hello", "again hello"):
        for session in sessions.values():
            answer(session.send(text))
        plain = sessions["off"].last_turn
        for kind in ("lookup", "draft"):
            turn = sessions[kind].last_turn
            assert turn.stats.tokens == plain.stats.tokens, kind
            assert turn.reused_tokens == plain.reused_tokens and not turn.restored_snapshot, kind
    assert sessions["draft"].last_turn.stats.accepted_tokens > 0


def test_speculation_respects_a_grammar(default_model):
    """With a regex constraint, every row of a verification pass is masked as plain constrained
    decoding masks each step, and guesses the grammar forbids are never checked: the same tokens."""
    pytest.importorskip("llguidance")
    from mlxmodels.constrain import Constraint
    from mlxmodels.generate import encode_prompt

    model, tokenizer = default_model
    ids = encode_prompt(tokenizer, "Fruit: apple, pear, plum, apple, pear, plum, apple, pear, plum,")
    constraint = Constraint.regex(" [a-z]+(, [a-z]+)*")
    _, plain = generate(model, tokenizer, ids, max_tokens=24, constraint=constraint)
    for proposer in (PromptLookup(3), Scripted(plain.tokens, len(ids))):
        _, stats = generate(model, tokenizer, ids, max_tokens=24, constraint=constraint,
                            speculative=SpeculativeDecoder(proposer))
        assert stats.tokens == plain.tokens and stats.accepted_tokens > 0, type(proposer).__name__


def qwen3_next_with_mtp(directory):
    """The Qwen3-Next fixture plus a random multi-token-prediction layer under Hugging Face's names
    (`mtp.fc`, `mtp.pre_fc_norm_*`, `mtp.norm`, `mtp.layers.0.*`; zero-centred norms), which
    transformers does not build: the checkpoint layout of Qwen/Qwen3-Next-80B-A3B."""
    import shutil

    from mlx.utils import tree_flatten

    from mlxmodels.models import build_model

    source = FIXTURES / "qwen3_next"
    config = json.loads((source / "config.json").read_text())
    config["mtp_num_hidden_layers"] = 1
    ours = {k: v for k, v in tree_flatten(build_model(config).parameters()) if k.startswith("mtp.0.")}
    theirs = {"mtp.0.eh_proj.": "mtp.fc.", "mtp.0.enorm.": "mtp.pre_fc_norm_embedding.",
              "mtp.0.hnorm.": "mtp.pre_fc_norm_hidden.", "mtp.0.shared_head.norm.": "mtp.norm.",
              "mtp.0.": "mtp.layers.0."}
    weights = dict(mx.load(str(source / "model.safetensors")))
    for i, (name, value) in enumerate(sorted(ours.items())):
        prefix = next(p for p in theirs if name.startswith(p))
        name, value = theirs[prefix] + name[len(prefix):], mx.random.normal(value.shape, key=mx.random.key(i)) * 0.1
        if ".mlp.experts." in name:  # one tensor per expert, as the checkpoints store them
            projection = name.split(".")[-2]
            weights.update({f"mtp.layers.0.mlp.experts.{e}.{projection}.weight": w for e, w in enumerate(value)})
        else:
            weights[name] = value
    directory.mkdir()
    mx.save_safetensors(str(directory / "model.safetensors"), weights)
    (directory / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, directory / name)
    return directory, weights


def test_qwen3_next_loads_its_mtp_layer_and_speculates_with_it(tmp_path):
    directory, weights = qwen3_next_with_mtp(tmp_path / "qwen3_next_mtp")
    model = mlxmodels.load_model(directory)
    block = model.mtp[0]
    assert mx.array_equal(block.enorm.weight, weights["mtp.pre_fc_norm_embedding.weight"] + 1).item()  # 1 + w
    assert mx.array_equal(block.eh_proj.weight, weights["mtp.fc.weight"]).item()
    assert mx.array_equal(block.mlp.experts.gate_proj.weight,
                          mx.stack([weights[f"mtp.layers.0.mlp.experts.{e}.gate_proj.weight"]
                                    for e in range(model.args.num_experts)])).item()
    reference = plain_greedy(model)
    tokens, stats = speculative_greedy(model, MTPHeads(model))
    assert tokens == reference and stats.draft_tokens > 0
    assert mlxmodels.load_model(FIXTURES / "qwen3_next").mtp == []  # no mtp.* tensors: no block


@pytest.mark.parametrize("name", ["deepseek_v3_mtp", "glm4_moe"])
def test_mtp_guess_is_the_block_on_the_hidden_state_and_next_token(name):
    """The proposer feeds block position i the target's final hidden state at i with token i + 1,
    and its first guess is the block's argmax at the last such position."""
    model = mlxmodels.load_model(FIXTURES / name)
    proposer = MTPHeads(model)
    proposer.start(PROMPT, GREEDY)
    hidden = model.model(mx.array([PROMPT[:-1]]), model.make_cache())
    proposer.observe(0, hidden[0])
    guess = proposer.propose(PROMPT, 1).tokens
    logits, _ = model.mtp[0](hidden, mx.array([PROMPT[1:]]), model.mtp[0].make_cache())
    assert guess == [int(mx.argmax(logits[0, -1]).item())]
    # In a generation, the block reads the prompt too (the prefill's hidden states), from position 0.
    speculative_greedy(model, proposer, n=3)
    assert proposer.first == 0 and proposer.next >= len(PROMPT) - 1


def test_errors_are_one_line():
    model = mlxmodels.load_model(FIXTURES / "llama3-v5")
    with pytest.raises(OrchardError, match="has no multi-token-prediction layers"):
        MTPHeads(model)
    with pytest.raises(OrchardError, match="at least 1"):
        SpeculativeDecoder(PromptLookup(), num_draft=0)
    with pytest.raises(OrchardError, match="n-gram size"):
        PromptLookup(0)


def test_a_draft_with_another_vocabulary_is_refused(default_model):
    """SmolLM2's tokenizer against the fixtures' one-char-per-token one: one line, naming the draft
    and the first id that differs."""
    model, tokenizer = default_model
    draft, draft_tokenizer = mlxmodels.load(FIXTURES / "llama3-v5")
    with pytest.raises(OrchardError) as error:
        check_same_vocabulary(tokenizer, draft_tokenizer, model, draft, "tiny-llama")
    message = str(error.value)
    assert "\n" not in message and message.startswith("draft model tiny-llama: its vocabulary differs")
    assert "id 0 is" in message


def test_orchard_run_refuses_a_draft_with_another_vocabulary_before_generating(capsys, default_model_dir):
    from app.main import main

    assert main(["run", "--draft", str(FIXTURES / "llama3-v5"), "--prompt", "hi"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"orchard: error: draft model {FIXTURES / 'llama3-v5'}: its vocabulary differs")


def test_orchard_run_speculates_and_reports_it(capsys):
    from app.main import main

    args = ["run", "-m", str(FIXTURES / "llama3-v5"), "--no-chat-template", "--prompt", "abcdabcdabcdabcd",
            "--max-tokens", "12", "--temp", "0"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--prompt-lookup", "2", "--num-draft", "3"]) == 0
    out, err = capsys.readouterr()
    assert out == plain and "| speculative: " in err and "tokens per pass" in err
    assert main(args + ["--num-draft", "3"]) == 1
    assert capsys.readouterr().err == "orchard: error: --num-draft needs --draft, --prompt-lookup or --mtp\n"
    assert main(args + ["--mtp"]) == 1
    assert "has no multi-token-prediction layers" in capsys.readouterr().err


def test_chat_app_loads_a_draft_and_reports_what_it_bought(tmp_path, monkeypatch, default_model_dir):
    """`orchard chat --draft M` on a fixture: the draft is loaded beside the model and checked against
    its tokenizer; with the "draft" setting the answer is the plain one and the status bar shows the
    tokens per pass. A draft with another tokenizer is refused with a message; the chat goes on."""
    from test_chat_ui import SIZE, async_test, ready, send

    from app.chat.app import ChatApp
    from app.chat.widgets import StatusBar
    from app.storage import Store

    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path / "data"))

    def loader(reference, progress):
        return mlxmodels.load(FIXTURES / "llama3-v5")

    @async_test
    async def run(draft):
        app = ChatApp(loader=loader, store=Store(), export_dir=tmp_path, draft=str(draft))
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            answers = []
            for kind in ("off", "draft"):
                if kind == "draft" and app.draft is None:
                    break
                app.session.params.speculative = kind
                await send(pilot, "abcabc")
                answers.append(app.session.messages[-1]["content"])
                app.session.messages.clear()
                app.session.reset_cache()
            notes = " ".join(n.message for n in app._notifications)
            return app, answers, str(app.screen.query_one(StatusBar).render()), notes

    app, answers, status, _ = run(FIXTURES / "qwen2-v5")
    assert app.draft is not None and answers[0] == answers[1]
    assert "tok/pass" in status
    app, answers, _, notes = run(default_model_dir)
    assert app.draft is None and len(answers) == 1
    assert "draft model failed to load: draft model" in notes and "its vocabulary differs" in notes
