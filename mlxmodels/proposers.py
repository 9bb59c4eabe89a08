"""What speculative decoding (mlxmodels/speculative.py) asks for guesses: three proposers.

- `PromptLookup`: the tokens that followed the last earlier occurrence of the text's final n-gram,
  in the prompt or the answer so far. No model at all: it pays off when the answer repeats its
  input (rewriting, editing code, quoting), and costs nothing when nothing matches.
- `DraftModel`: a smaller model with the same vocabulary (a small model of the family, or a 2-3 bit
  conversion of the target) runs k steps ahead. Its own cache persists across generations (a chat's
  next turn feeds it only what it has not seen) and rewinds like the target's.
- `MTPHeads`: the multi-token-prediction block a DeepSeek-V3 / GLM-4.5 checkpoint carries
  (layers/mtp.py, `model.mtp`): from the target's final hidden state at position i and token i + 1
  it predicts token i + 2, and chained on its own output state, the tokens after that.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from mlxmodels.cache import cache_state
from mlxmodels.errors import OrchardError
from mlxmodels.layers.ops import argmax
from mlxmodels.sampling import SamplingParams, filtered_logits
from mlxmodels.speculative import NO_PROPOSAL, CacheRewind, Proposal, Proposer


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _Chooser:
    """Picks a guess from proposer logits [1, vocab] the way the target will judge it: argmax when
    greedy; else a draw from the filtered distribution, which is returned with it (the q of the
    rejection rule)."""

    def __init__(self, sampling: SamplingParams):
        self.sampling = sampling
        self.greedy = sampling.temperature == 0

    def __call__(self, logits: mx.array) -> tuple[mx.array, mx.array | None]:
        if self.greedy:
            return argmax(logits), None
        filtered = filtered_logits(logits, self.sampling)
        return mx.random.categorical(filtered, axis=-1), mx.softmax(filtered, axis=-1)

    def proposal(self, tokens: list[mx.array], probs: list) -> Proposal:
        ids = mx.concatenate(tokens).tolist()
        return Proposal(ids, None if self.greedy else mx.concatenate(probs))


class PromptLookup(Proposer):
    """Guesses by n-gram lookup: finds the most recent earlier occurrence of the context's last
    `ngram` tokens (then of shorter n-grams, down to `min_ngram`) and proposes what followed it.

    An index of every n-gram's latest end position grows with the context, so a lookup costs a few
    dictionary probes however long the text."""

    name = "prompt lookup"
    default_draft = 10

    def __init__(self, ngram: int = 3, min_ngram: int = 1):
        if ngram < 1:
            raise OrchardError(f"prompt lookup n-gram size must be at least 1, got {ngram}")
        self.ngram, self.min_ngram = ngram, min(min_ngram, ngram)
        self.start([], SamplingParams())

    def start(self, context: list[int], sampling: SamplingParams) -> None:
        self.index: list[dict] = [{} for _ in range(self.ngram)]  # n - 1 -> {n-gram: last end position}
        self.indexed = 0  # positions whose n-grams are in the index
        self.context: list[int] = []

    def propose(self, context: list[int], k: int) -> Proposal:
        if context[: self.indexed] != self.context[: self.indexed]:
            self.start([], SamplingParams())  # not an extension of what was indexed: start over
        self.context = list(context)
        # Index the n-grams ending before the last token: the last one is what we look up.
        for end in range(self.indexed, len(context) - 1):
            for n in range(1, min(self.ngram, end + 1) + 1):
                self.index[n - 1][tuple(context[end - n + 1 : end + 1])] = end
        self.indexed = max(self.indexed, len(context) - 1)
        for n in range(min(self.ngram, len(context)), self.min_ngram - 1, -1):
            end = self.index[n - 1].get(tuple(context[-n:]))
            if end is not None:
                return Proposal(context[end + 1 : end + 1 + k])
        return NO_PROPOSAL


class PredictedOutput(Proposer):
    """Prompt lookup over the prompt, a predicted answer and the answer so far: OpenAI's Predicted
    Outputs (`prediction`), the text the answer is expected to largely repeat (a file being edited).
    The prediction sits between the prompt and the answer, so the answer's own text, then the
    prediction's, is matched first."""

    name = "predicted output"
    default_draft = PromptLookup.default_draft

    def __init__(self, prediction: list[int], ngram: int = 3):
        self.prediction = list(prediction)
        self.lookup = PromptLookup(ngram)
        self.prompt_length = 0

    def start(self, context: list[int], sampling: SamplingParams) -> None:
        self.prompt_length = len(context)
        self.lookup = PromptLookup(self.lookup.ngram, self.lookup.min_ngram)

    def propose(self, context: list[int], k: int) -> Proposal:
        at = self.prompt_length
        return self.lookup.propose(context[:at] + self.prediction + context[at:], k)


class DraftModel(Proposer):
    """Guesses from a smaller model sharing the target's vocabulary (see `load_draft`)."""

    name = "draft model"
    default_draft = 4

    def __init__(self, model, prefill_step: int = 512):
        self.model, self.prefill_step = model, prefill_step
        self.choose = _Chooser(SamplingParams(temperature=0.0))
        self.forget()

    def forget(self) -> None:
        self.cache = self.model.make_cache()
        self.rewind = CacheRewind(self.cache)
        self.held: list[int] = []  # exactly the ids the draft's cache holds

    def start(self, context: list[int], sampling: SamplingParams) -> None:
        self.choose = _Chooser(sampling)

    def propose(self, context: list[int], k: int) -> Proposal:
        try:
            return self._propose(context, k)
        except BaseException:
            self.forget()  # whatever the cache holds now is unknown
            raise

    def _propose(self, context: list[int], k: int) -> Proposal:
        from mlxmodels.generate import prefill

        # Keep what the draft has seen of this context (at least one token left to feed).
        reached = self.rewind.rewind_to(_common_prefix(self.held, context, len(context) - 1))
        if reached is None:
            self.forget()
            reached = 0
        del self.held[reached:]
        self.rewind.mark()
        feed = mx.array(context[reached:], dtype=mx.uint32)
        if feed.size > self.prefill_step:
            feed = prefill(self.model, feed, self.cache, self.prefill_step)
        logits = self.model(feed[None], self.cache)[0, -1:]
        tokens, probs = [], []
        for i in range(k):
            token, prob = self.choose(logits)
            tokens.append(token)
            probs.append(prob)
            if i + 1 < k:
                logits = self.model(token[None], self.cache)[0, -1:]
        proposal = self.choose.proposal(tokens, probs)
        self.held = list(context) + proposal.tokens[:-1]
        return proposal


def load_draft(reference, target_model, target_tokenizer, cpu_weights: str = "auto",
               progress=None) -> DraftModel:
    """A draft model for `target_model`, refused in one line unless it shares the target's tokenizer."""
    from mlxmodels.api import load

    model, tokenizer = load(reference, progress=progress, cpu_weights=cpu_weights)
    check_same_vocabulary(target_tokenizer, tokenizer, target_model, model, str(reference))
    return DraftModel(model)


def check_same_vocabulary(target_tokenizer, draft_tokenizer, target_model, draft_model, draft_name: str) -> None:
    """Speculation compares token ids, so a draft must give every id the meaning the target does."""
    target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    target_name = Path(str(getattr(getattr(target_model, "info", None), "path", "the model"))).name
    if target_vocab != draft_vocab:
        target_ids = {i: t for t, i in target_vocab.items()}
        draft_ids = {i: t for t, i in draft_vocab.items()}
        first = min(i for i in set(target_ids) | set(draft_ids) if target_ids.get(i) != draft_ids.get(i))
        raise OrchardError(
            f"draft model {draft_name}: its vocabulary differs from {target_name}'s ({len(draft_vocab)} vs "
            f"{len(target_vocab)} tokens; id {first} is {draft_ids.get(first)!r} there, "
            f"{target_ids.get(first)!r} here): a draft must share the target's tokenizer")
    width = (getattr(getattr(draft_model, "info", None), "config", None) or {}).get("vocab_size")
    if width is not None and width <= max(target_vocab.values()):
        raise OrchardError(f"draft model {draft_name}: its vocab_size is {width}, but the tokenizer has ids up to "
                           f"{max(target_vocab.values())}")


class MTPHeads(Proposer):
    """Guesses from the target's own multi-token-prediction block (`model.mtp[0]`; a checkpoint
    with several uses the first, chained, as vLLM does for DeepSeek-V3).

    Block position i takes the target's hidden state at i and token i + 1. The block has its own
    KV cache, filled with every position the target has verified (the prompt's included, from the
    hidden states of the prefill); the chained guesses' positions are trimmed off at the next call.
    Positions a chat's cached prefix holds have no hidden states here, so the block's cache starts at
    this generation's first new token (its attention is relative: RoPE makes the start irrelevant)."""

    name = "multi-token prediction"
    default_draft = 2
    needs_hidden = True

    def __init__(self, model, prefill_step: int = 512):
        blocks = list(getattr(model, "mtp", None) or [])
        if not blocks:
            name = Path(str(getattr(getattr(model, "info", None), "path", "the model"))).name
            raise OrchardError(f"{name} has no multi-token-prediction layers (DeepSeek-V3 and GLM-4.5 checkpoints "
                               "carry them; converters that drop them leave none)")
        self.block, self.prefill_step = blocks[0], prefill_step
        self.start([], SamplingParams(temperature=0.0))

    def start(self, context: list[int], sampling: SamplingParams) -> None:
        self.choose = _Chooser(sampling)
        self.cache = self.block.make_cache()
        self.rewind = CacheRewind([self.cache])
        self.first: int | None = None  # the context position of the block cache's first entry
        self.next = 0  # the first position the block has not processed
        self.hidden: list[tuple[int, mx.array]] = []  # (first position, [L, D]) per target pass

    def observe(self, index: int, hidden: mx.array) -> None:
        self.hidden.append((index, hidden))

    def propose(self, context: list[int], k: int) -> Proposal:
        last = len(context) - 2  # the last position with both its hidden state and next token known
        if self.first is None:
            if not self.hidden:
                return NO_PROPOSAL
            self.first = self.next = self.hidden[0][0]
        self.rewind.rewind_to(self.next - self.first)  # drop the last proposal's chained positions
        if last < self.next:
            return NO_PROPOSAL
        states = self._states(self.next, last)
        ids = mx.array(context[self.next + 1 : last + 2], dtype=mx.uint32)
        for at in range(0, ids.size, self.prefill_step):
            logits, h = self.block(states[None, at : at + self.prefill_step], ids[None, at : at + self.prefill_step],
                                   self.cache)
            if at + self.prefill_step < ids.size:
                mx.eval(cache_state([self.cache]))
        self.next = last + 1
        self.hidden = [(s, a) for s, a in self.hidden if s + a.shape[0] > self.next]
        tokens, probs = [], []
        logits, h = logits[0, -1:], h[:, -1:]
        for i in range(k):
            token, prob = self.choose(logits)
            tokens.append(token)
            probs.append(prob)
            if i + 1 < k:
                logits, h = self.block(h, token[None], self.cache)
                logits = logits[0, -1:]
        return self.choose.proposal(tokens, probs)

    def _states(self, first: int, last: int) -> mx.array:
        """The target's hidden states [n, D] at positions first..last, each from the latest pass
        that computed it (earlier passes' rows past a rejection were superseded)."""
        owner: dict[int, tuple[int, int]] = {}
        for entry in range(len(self.hidden) - 1, -1, -1):
            start, states = self.hidden[entry]
            for position in range(max(start, first), min(start + states.shape[0], last + 1)):
                owner.setdefault(position, (entry, position - start))
        pieces, position = [], first
        while position <= last:
            entry, row = owner[position]
            run = 1
            while position + run <= last and owner.get(position + run) == (entry, row + run):
                run += 1
            pieces.append(self.hidden[entry][1][row : row + run])
            position += run
        return mx.concatenate(pieces) if len(pieces) > 1 else pieces[0]
