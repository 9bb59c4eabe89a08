"""ChatSession: prefix reuse across turns, rewinding, snapshots, context overflow, stop.

The fake engine below sits at the engine boundary (a model and a tokenizer), so everything above
it — `stream_generate`, the session, the UI's bridge — runs its real code. The fake model keeps no
state of its own: it stores the token ids it is fed as the *keys* of real cache objects and reads
the conversation back from the cache to decide its next token. A wrong trim, a stale snapshot or a
mis-tracked token therefore shows up as a wrong answer, not only as a wrong counter.
"""

from __future__ import annotations

import codecs
import time
from pathlib import Path

import mlx.core as mx
import pytest

from conftest import hybrid_fixtures

from mlxmodels.cache import KVCache, RotatingKVCache
from mlxmodels.chat_session import ChatParams, ChatSession
from mlxmodels.errors import ContextLengthError, OrchardError

# Byte-level vocabulary; control bytes mark the template's parts. EOS doubles as "end of turn".
SYSTEM, USER, ASSISTANT, EOS = 4, 1, 2, 3
VOCAB = 256


class FakeDetokenizer:
    def __init__(self):
        self.reset()

    def reset(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.last_segment = ""

    def add_token(self, token):
        self.last_segment = self._decoder.decode(bytes([token]))

    def finalize(self):
        self.last_segment = self._decoder.decode(b"", final=True)


class FakeTokenizer:
    """UTF-8 bytes as tokens, with a chat template made of control bytes."""

    has_chat_template = True
    bos_token = None
    eos_token_ids = {EOS}

    def __init__(self):
        self.detokenizer = FakeDetokenizer()

    def encode(self, text, add_special_tokens=True):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", "replace")

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        marks = {"system": "\x04", "user": "\x01", "assistant": "\x02"}
        text = "".join(f"{marks[m['role']]}{m['content']}\x03" for m in messages)
        return text + ("\x02" if add_generation_prompt else "")


class NoTrimCache(KVCache):
    """Stands for a recurrent (SSM) state: it can be copied but never rewound."""

    def can_trim(self, n):
        return n == 0

    def copy(self):
        clone = NoTrimCache()
        clone.offset, clone.keys, clone.values = self.offset, self.keys, self.values
        return clone


def _small_rotating():
    """A sliding-window cache that keeps only 2 spare positions, so it cannot rewind a turn."""
    cache = RotatingKVCache(window=8)
    cache.step = 2
    return cache


class FakeInfo:
    def __init__(self, context_length):
        self.context_length = context_length
        self.model_type = "fake"
        self.path = Path("fake-model")
        self.backend = "cpu"


class FakeModel:
    """Answers each user message with `reply(message)`, one byte per step, then EOS.

    `fed` records how many tokens each call received (the engine's prefill + decode requests).
    `delay` slows each step (for stopping mid-answer); a message containing "boom" raises.
    """

    def __init__(self, reply=None, context_length=4096, layers=("kv",), delay=0.0):
        self.reply = reply or (lambda message: f"You said: {message}")
        self.info = FakeInfo(context_length)
        self.layers = layers
        self.delay = delay
        self.fed: list[int] = []

    def make_cache(self):
        kinds = {"kv": KVCache, "notrim": NoTrimCache, "rotating": _small_rotating}
        return [kinds[k]() for k in self.layers]

    def __call__(self, tokens, cache=None):
        L = tokens.shape[1]
        self.fed.append(L)
        if self.delay:
            time.sleep(self.delay)
        keys = tokens.astype(mx.float32).reshape(1, 1, L, 1)
        history = None
        for layer in cache:
            k, _ = layer.update_and_fetch(keys, keys)
            if history is None:
                history = k  # the first layer is a full-history cache in every configuration
        ids = [int(x) for x in history.reshape(-1).tolist()]
        logits = mx.zeros((1, L, VOCAB))
        logits[:, -1, self._next(ids)] = 100.0  # sharp enough that sampling at any temperature agrees
        return logits

    def _next(self, ids):
        if ASSISTANT not in ids or USER not in ids or ids.index(USER) > len(ids) - 1:
            return 0  # mid-prefill: these logits are never sampled
        start = max(i for i, t in enumerate(ids) if t == ASSISTANT)
        if start < max(i for i, t in enumerate(ids) if t == USER):
            return 0  # mid-prefill of a new user message
        user_at = max(i for i, t in enumerate(ids[:start]) if t == USER)
        message = bytes(ids[user_at + 1 : ids.index(EOS, user_at)]).decode("utf-8")
        if "boom" in message:
            raise RuntimeError("the fake model exploded")
        answer = self.reply(message).encode("utf-8")
        done = len(ids) - start - 1
        return answer[done] if done < len(answer) else EOS


def make_session(**kwargs):
    params = ChatParams(temperature=0.0, max_tokens=kwargs.pop("max_tokens", 200))
    system = kwargs.pop("system", "be brief")
    model = FakeModel(**kwargs)
    return ChatSession(model, FakeTokenizer(), system_prompt=system, params=params), model


def answer(stream) -> str:
    return "".join(chunk.text for chunk in stream)


def test_second_turn_prefills_only_the_new_tokens():
    session, model = make_session()
    assert answer(session.send("hello")) == "You said: hello"
    first_cache = session.context_used
    model.fed.clear()
    assert answer(session.send("again")) == "You said: again"
    turn = session.last_turn
    # The template renders turn one exactly as it was cached (its answer and the EOS fed after it).
    new = len("\x01again\x03\x02")
    assert turn.reused_tokens == first_cache and turn.new_tokens == new
    assert turn.stats.cached_tokens == first_cache and turn.stats.prompt_tokens == new
    assert model.fed[:2] == [new - 1, 1]  # prefill all new tokens but the last, then decode from it
    assert session.context_used == first_cache + new + len("You said: again") + 1


def test_regenerate_and_edit_rewind_by_trimming():
    session, model = make_session()
    answer(session.send("one"))
    answer(session.send("two"))
    before = session.context_used
    model.fed.clear()
    assert answer(session.regenerate()) == "You said: two"
    assert session.last_turn.new_tokens == 1 and not session.last_turn.restored_snapshot
    assert session.context_used == before
    assert answer(session.edit_last("three")) == "You said: three"
    assert [m["content"] for m in session.messages] == ["one", "You said: one", "three", "You said: three"]
    # "three" shares its first byte with "two": byte-level prefix reuse keeps it.
    assert session.last_turn.new_tokens == len("hree\x03\x02")


@pytest.mark.parametrize("layers", [("kv", "notrim"), ("kv", "rotating")])
def test_caches_that_cannot_rewind_restore_a_snapshot(layers):
    session, model = make_session(layers=layers)
    answer(session.send("first question"))
    answer(session.send("second question"))
    after_two = session.context_used
    # Follow-ups extend the cache without any rewinding.
    assert session.last_turn.new_tokens == len("\x01second question\x03\x02")
    # Regenerating needs the state before turn two's answer: the snapshot taken where turn two's
    # prompt ended has it, so only the prompt's last token is fed again.
    assert answer(session.regenerate()) == "You said: second question"
    turn = session.last_turn
    assert turn.restored_snapshot
    assert turn.new_tokens == 1
    assert session.context_used == after_two
    # The snapshot survived being restored: a second rewind to it works too.
    assert answer(session.edit_last("third")) == "You said: third"
    if "notrim" in layers:  # (a sliding window may still hold enough spare positions to trim)
        assert session.last_turn.restored_snapshot
        assert session.last_turn.new_tokens == len("\x01third\x03\x02")


def test_context_overflow_drops_oldest_turns_keeps_system_and_rebuilds_once():
    session, model = make_session(context_length=100, max_tokens=20)
    session.answer_reserve = 20
    for word in ("alpha", "bravo", "charlie"):
        answer(session.send(word))
    assert session.last_turn.dropped_messages == 0
    assert answer(session.send("delta")) == "You said: delta"
    turn = session.last_turn
    assert turn.dropped_messages == 2 and session.dropped == 2
    # The system prompt is still the start of the cache; the first turn is gone from it.
    cached = bytes(t for t in session.cache_tokens if t >= 0)
    assert cached.startswith(b"\x04be brief\x03\x01bravo")
    # Rebuilt once, from just after the system prompt (and the next turn's opening byte).
    assert turn.reused_tokens == len("\x04be brief\x03\x01")
    answer(session.send("echo"))
    assert session.last_turn.dropped_messages in (0, 2)
    if session.last_turn.dropped_messages == 0:
        assert session.last_turn.new_tokens == len("\x01echo\x03\x02")
    # A message that cannot fit even alone is refused with a one-line error.
    with pytest.raises(ContextLengthError, match="context is 100 tokens"):
        answer(session.send("x" * 120))


def test_stop_keeps_the_partial_answer_and_the_next_turn_reuses_the_cache():
    session, model = make_session(reply=lambda m: "a long answer " * 10)
    seen = []

    def should_stop():
        return len(seen) >= 5

    for chunk in session.send("talk", should_stop=should_stop):
        seen.append(chunk.text)
    last = session.messages[-1]
    assert last["stopped"] and last["content"] == "a lon"
    assert session.last_turn.stats.finish_reason == "cancelled"
    cached = session.context_used
    answer(session.send("next"))
    # The stopped answer re-renders as it was cached, only its end-of-turn byte differs.
    assert session.last_turn.reused_tokens == cached


def test_stop_during_prefill_keeps_the_prefilled_chunks():
    session, model = make_session(reply=lambda m: f"{len(m)} bytes")
    long_message = "x" * 1200  # three prefill chunks of 512
    chunks = list(session.send(long_message, should_stop=lambda: True))
    assert chunks == [] and session.last_turn.stopped
    assert session.messages[-1] == {"role": "user", "content": long_message}  # no answer appended
    assert session.context_used == 512 and session.last_turn.new_tokens == 512
    assert answer(session.regenerate()) == "1200 bytes"
    assert session.last_turn.reused_tokens == 512


def test_generation_error_resets_the_cache_and_keeps_the_conversation_usable():
    session, model = make_session()
    answer(session.send("fine"))
    with pytest.raises(RuntimeError, match="exploded"):
        answer(session.send("boom"))
    assert session.cache_tokens == [] and session.messages[-1]["content"] == "boom"
    assert answer(session.send("ok now")) == "You said: ok now"
    assert [m["content"] for m in session.messages][-2:] == ["ok now", "You said: ok now"]


def test_params_are_validated_with_one_line_errors():
    with pytest.raises(OrchardError, match="top-p must be in"):
        ChatParams(top_p=1.5).validate()
    with pytest.raises(OrchardError, match="max tokens must be"):
        ChatParams(max_tokens=0).validate()
    with pytest.raises(OrchardError, match="seed must be"):
        ChatParams(seed=-3).validate()
    assert ChatParams.from_dict({"temperature": 0.2, "unknown": 1}).temperature == 0.2


def test_real_model_reuse_matches_a_fresh_prefill(default_model):
    """Turn two on the reused cache answers exactly as a fresh cache given the whole conversation
    (greedy decoding; a handful of tokens so float32 rounding differences cannot flip argmax)."""
    model, tokenizer = default_model
    params = ChatParams(temperature=0.0, max_tokens=5)
    session = ChatSession(model, tokenizer, params=params)
    answer(session.send("What is the capital of France?"))
    second = answer(session.send("And of Italy?"))
    assert session.last_turn.stats.cached_tokens > 20
    fresh = ChatSession(model, tokenizer, params=params, messages=[dict(m) for m in session.messages[:-1]])
    assert answer(fresh.regenerate()) == second
    assert fresh.last_turn.reused_tokens == 0


FIXTURES = Path(__file__).parent / "fixtures" / "models"


@pytest.mark.parametrize("name", ["llama3-v5", "mistral-swa", "gemma3-v5", "mamba", "mamba2", *hybrid_fixtures(),
                                  "smollm3", "olmo2", "olmo3", "gpt_oss", "phi3", "gemma2", "llama4_text",
                                  "deepseek_v2", "deepseek_v3_mtp", "glm4_moe"])
def test_reuse_matches_fresh_prefill_on_every_cache_kind(name):
    """Tiny random-weight models of each cache kind (growing KV, sliding window, mixed, SSM state):
    every turn answered on the reused / trimmed / restored cache produces exactly the tokens a fresh
    cache given the whole conversation produces. Greedy decoding compares argmax only, and the parity
    fixtures already hold incremental vs full-sequence logits to ~1e-5, far below these models'
    top-2 logit gaps; the ids must match exactly."""
    directory = FIXTURES / name
    import mlxmodels

    model = mlxmodels.load_model(directory)
    # Byte-level prompts stay below the fixtures' 128-token vocabulary (ASCII only).
    params = ChatParams(temperature=0.0, max_tokens=5)
    session = ChatSession(model, FakeTokenizer(), params=params, answer_reserve=5)

    def fresh_tokens():
        fresh = ChatSession(model, FakeTokenizer(), params=params, messages=[dict(m) for m in session.messages[:-1]])
        answer(fresh.regenerate())
        return fresh.last_turn.stats.tokens

    def assert_cache_is_exact():
        # The cache must equal a fresh prefill of the tokens the session says it holds: compare the
        # logits both give for one more token (float32; chunked vs one-shot prefill differ ~1e-6).
        import mlx.core as mx

        from mlxmodels.cache import copy_cache

        held = session.cache_tokens
        assert all(t >= 0 for t in held)
        probe = [5]
        reused = model(mx.array([probe]), cache=copy_cache(session.cache))[0, -1]
        fresh = model(mx.array([held + probe]), cache=model.make_cache())[0, -1]
        assert mx.allclose(reused, fresh, atol=1e-4, rtol=1e-4).item()

    for step in ("hi", "more", "regenerate", "edit"):
        if step == "regenerate":
            answer(session.regenerate())
        elif step == "edit":
            answer(session.edit_last("other"))
        else:
            answer(session.send(step))
        turn = session.last_turn
        assert turn.stats.tokens == fresh_tokens(), step
        assert_cache_is_exact()
        if step == "more":
            assert turn.reused_tokens > 0 and not turn.restored_snapshot
    if name.startswith("mamba") or name in hybrid_fixtures():
        assert turn.restored_snapshot  # a recurrent state cannot be trimmed: rewinds came from snapshots


@pytest.mark.parametrize("name", hybrid_fixtures())
def test_hybrid_chat_reads_only_each_turns_new_tokens(name):
    """Three turns on a hybrid model: every follow-up prefills exactly the tokens its turn adds (the
    cache held everything before, attention KV and recurrent state alike), and nothing is re-read."""
    import mlxmodels

    model = mlxmodels.load_model(FIXTURES / name)
    session = ChatSession(model, FakeTokenizer(), params=ChatParams(temperature=0.0, max_tokens=4), answer_reserve=4)
    answer(session.send("first"))
    for text in ("second", "third"):
        held = list(session.cache_tokens)
        answer(session.send(text))
        turn = session.last_turn
        assert turn.reused_tokens == len(held) and not turn.restored_snapshot, text
        # New: the end-of-turn mark after an answer cut by max_tokens, the user turn, the reply header.
        closing = "" if held[-1] == EOS else "\x03"
        assert turn.new_tokens == len(f"{closing}\x01{text}\x03\x02"), text


class _SeveralEOS(FakeTokenizer):
    """The end-of-turn mark is the second of two EOS ids (as Llama 3 lists <|eot_id|> after <|end_of_text|>)."""

    eos_token_ids = [127, EOS]


class _EndsTurnAfter:
    """A fixture model whose answers end with EOS after `n` tokens of its own (the other EOS id never wins)."""

    def __init__(self, model, n: int):
        self.model, self.n, self.steps = model, n, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, tokens, cache=None):
        logits = self.model(tokens, cache=cache)
        # Each one-token call past the prompt's chunks produces the next answer token.
        self.steps = self.steps + 1 if tokens.shape[1] == 1 else 0
        logits[:, -1, 127] = -1e9
        if self.steps > self.n:
            logits[:, -1, EOS] = 1e9
        return logits


def test_follow_up_reuses_the_whole_cache_when_the_answer_ended_with_the_second_eos_id():
    """With several EOS ids, the one generated (fed to the cache by the pipelined decoder) is recorded,
    so on a recurrent model, which cannot rewind, the next turn reads only its own tokens."""
    import mlxmodels

    model = _EndsTurnAfter(mlxmodels.load_model(FIXTURES / "mamba"), n=2)
    session = ChatSession(model, _SeveralEOS(), params=ChatParams(temperature=0.0, max_tokens=8), answer_reserve=8)
    answer(session.send("first"))
    assert session.last_turn.stats.finish_reason == "stop" and session.last_turn.stats.stop_token == EOS
    held = list(session.cache_tokens)
    assert held[-1] == EOS
    answer(session.send("second"))
    turn = session.last_turn
    assert turn.reused_tokens == len(held) and not turn.restored_snapshot
    assert turn.new_tokens == len("\x01second\x03\x02")
