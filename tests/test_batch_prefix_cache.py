"""The prefix cache shared across requests (mlxmodels/prefix_cache.py): which earlier cache a prompt
reuses, for caches that can rewind (KV) and caches that cannot (SSM state); the byte bound; and,
through the server's engine, snapshots at message boundaries that let a recurrent model reuse a
shared system prompt. Whether reuse changes an answer is checked in test_batch (it must not)."""

from __future__ import annotations

import mlx.core as mx
import pytest
from conftest import FIXTURES

import mlxmodels
from mlxmodels.cache import cache_nbytes, cache_offset
from mlxmodels.generate import prefill
from mlxmodels.prefix_cache import PrefixCache


@pytest.fixture(scope="module")
def llama():
    return mlxmodels.load(FIXTURES / "llama3-v5")


@pytest.fixture(scope="module")
def mamba():
    return mlxmodels.load(FIXTURES / "mamba2")


def filled(model, tokens: list[int]) -> list:
    cache = model.make_cache()
    prefill(model, mx.array(tokens + [0], dtype=mx.uint32), cache)  # feeds all of `tokens`
    return cache


def test_rewindable_caches_serve_any_shared_prefix(llama):
    model, _ = llama
    store = PrefixCache(1 << 30)
    stored = [5, 6, 7, 8, 9, 10]
    store.insert(stored, filled(model, stored))
    assert store.lookup([1, 2])[1] == 0  # nothing shared
    for prompt, expected in (([5, 6, 7, 8, 9, 10, 11], 6), ([5, 6, 7, 40, 41], 3), ([5, 6], 2)):
        cache, m = store.lookup(prompt)
        assert m == expected and cache_offset(cache) == expected
        # The copy continues like a cache that only ever saw those tokens: the same keys and values,
        # computed by prefills of other lengths (BLAS blocks the products differently: ~1e-7 relative).
        assert mx.allclose(model(mx.array([[3]]), cache), model(mx.array([[3]]), filled(model, prompt[:m])),
                           rtol=1e-5, atol=1e-5)
    cache, m = store.lookup(stored)  # the entry itself was not changed by the lookups above
    assert m == 6 and cache_offset(cache) == 6


def test_recurrent_caches_only_serve_where_they_were_taken(mamba):
    model, _ = mamba
    store = PrefixCache(1 << 30)
    store.insert([5, 6, 7], filled(model, [5, 6, 7]))
    store.insert([5, 6, 7, 8, 9], filled(model, [5, 6, 7, 8, 9]))
    assert store.lookup([5, 6, 7, 8, 9, 1])[1] == 5
    assert store.lookup([5, 6, 7, 8, 2])[1] == 3  # cannot rewind 9 -> 8: the earlier snapshot
    assert store.lookup([5, 6, 2])[1] == 0
    assert store.entries == 2  # a state that cannot rewind does not make its prefixes redundant


def test_an_entry_that_can_rewind_replaces_its_prefixes(llama):
    model, _ = llama
    store = PrefixCache(1 << 30)
    store.insert([5, 6, 7], filled(model, [5, 6, 7]))
    store.insert([5, 6, 7, 8], filled(model, [5, 6, 7, 8]))
    assert store.entries == 1 and store.lookup([5, 6, 7, 1])[1] == 3
    # The same tokens again: the newer cache replaces the older and stays reachable.
    store.insert([5, 6, 7, 8], filled(model, [5, 6, 7, 8]))
    assert store.entries == 1 and store.lookup([5, 6, 7, 8, 1])[1] == 4
    assert store.nbytes == cache_nbytes(filled(model, [5, 6, 7, 8]))


def test_bounded_by_bytes_least_recently_used_first(mamba):
    model, _ = mamba
    size = cache_nbytes(filled(model, [1]))
    store = PrefixCache(3 * size)
    for first in (10, 20, 30):
        store.insert([first, 1], filled(model, [first, 1]))
    assert store.lookup([10, 1, 0])[1] == 2  # 10 is now the most recently used
    store.insert([40, 1], filled(model, [40, 1]))
    assert store.entries == 3 and store.nbytes <= 3 * size
    assert store.lookup([20, 1, 0])[1] == 0  # the least recently used went
    assert [store.lookup([f, 1, 0])[1] for f in (10, 30, 40)] == [2, 2, 2]
    PrefixCache(size // 2).insert([1], filled(model, [1]))  # larger than the whole budget: not kept


def test_chat_system_prompt_reused_by_a_recurrent_model(mamba):
    """Through the server's engine: two conversations with the same system prompt on an SSM model. The
    second reuses the snapshot taken where the system message ends, and answers as it would fresh."""
    from app.serve_engine import ServeEngine
    from app.serve_schema import ChatCompletionRequest
    from mlxmodels.scheduler import Scheduler

    model, tokenizer = mamba

    def ask(engine, question):
        body = ChatCompletionRequest.model_validate({
            "model": "m", "max_tokens": 5, "temperature": 0,
            "messages": [{"role": "system", "content": "Be brief and kind."}, {"role": "user", "content": question}]})
        prepared = engine.prepare_chat(body)
        outputs = []
        engine.scheduler.submit(prepared.request, outputs.append)
        while not (outputs and outputs[-1].finish_reason):
            engine.scheduler.step()
        return "".join(o.text for o in outputs), outputs[-1].usage, prepared.request.boundaries

    shared = ServeEngine(model, tokenizer, Scheduler(model, tokenizer, prefix_cache=PrefixCache(1 << 30)), "m", {})
    ask(shared, "Hi there")
    text, usage, boundaries = ask(shared, "What now?")
    assert boundaries and usage.cached_tokens == boundaries[0]  # "System: Be brief and kind.\n"
    fresh = ServeEngine(model, tokenizer, Scheduler(model, tokenizer), "m", {})
    assert ask(fresh, "What now?")[0] == text
