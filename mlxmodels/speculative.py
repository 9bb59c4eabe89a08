"""Speculative decoding: a proposer guesses the next tokens, the target checks them all in one pass.

Decoding one sequence reads every weight once per token. A pass over k + 1 tokens reads them once
too, so when a cheap proposer (mlxmodels/proposers.py: prompt lookup, a draft model, the model's own
multi-token-prediction heads) guesses k tokens, the target verifies them together and keeps the
longest accepted prefix plus one token of its own: 1 to k + 1 tokens for one pass.

The rule that keeps the output the target's own:
- greedy (temperature 0): a guess is accepted while it equals the target's argmax; the first
  mismatch is replaced by that argmax, so the text is exactly plain greedy decoding's;
- sampling: guess d drawn from the proposer's distribution q is accepted with probability
  min(1, p(d) / q(d)), p being the target's distribution after temperature, top-k/p and min-p
  (`sampling.filtered_logits`, what the plain sampler draws from) and the logits processors; on
  rejection the token is drawn from max(0, p - q) renormalised (Leviathan et al. 2023, Chen et al.
  2023). Each emitted token is then distributed exactly as p. A deterministic guess (prompt lookup,
  a greedy draft) is the case q = a point mass: accepted with probability p(d), else drawn from p
  with d removed.

Rolling the caches back. After a pass the cache holds the k guesses, of which only the accepted
prefix may stay (`CacheRewind`). Every KV kind (growing, sliding-window, chunked, quantized, latent)
trims them. A recurrent state (Mamba, Gated DeltaNet, short conv: `SSMCache`, alone or inside an
`AttentionSSMCache`) cannot: it is snapshotted before the pass (`copy()`, which shares the immutable
state arrays: free) and, on a rejection, every layer goes back to the snapshot and the accepted
tokens are fed again *as the start of the next verification pass*. That costs no extra pass, only
a few more positions in the next one (compute, not another read of the weights, which is what
decode waits on). The alternative, layers returning their state after every position, would change
five recurrent implementations and their chunked scans, and keep k states per layer alive.

`SpeculativeDecoder.tokens` is a drop-in for `generate.generate_tokens`: stream_generate runs it
when given `speculative=`, so `orchard run`, the chat and the benchmark share it. While the proposer
has nothing to offer, decoding runs pipelined one-token steps as plain decoding does, so a text
that never repeats costs (almost) nothing. How many tokens to ask for adapts (`DraftLength`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import mlx.core as mx

from mlxmodels.cache import cache_offset, cache_state
from mlxmodels.constrain import apply_token_mask
from mlxmodels.errors import OrchardError
from mlxmodels.layers.ops import argmax
from mlxmodels.sampling import SamplingParams, filtered_logits, make_sampler


@dataclass
class Proposal:
    """Guessed next tokens, and for sampled guesses the distribution each was drawn from."""

    tokens: list[int]
    probs: mx.array | None = None  # [len(tokens), vocab]; None: chosen deterministically

    def after_first(self) -> "Proposal":
        """The guesses after the first one (when the first turned out right by other means)."""
        return Proposal(self.tokens[1:], None if self.probs is None else self.probs[1:])


NO_PROPOSAL = Proposal([])


class Proposer:
    """What a proposer offers the decoding loop (implementations: mlxmodels/proposers.py).

    `context` is the whole text so far as ids (a chat's earlier turns, the prompt, the tokens
    decided); its last token is not yet in the target's cache. Proposals only change speed: any
    tokens, or none, give the target's own output."""

    name = "proposer"
    default_draft = 4  # the most tokens one proposal holds when the user does not say
    needs_hidden = False  # whether it reads the target's final hidden states (`observe`)

    def start(self, context: list[int], sampling: SamplingParams) -> None:
        """A generation begins after `context` (every call to `propose` extends it)."""

    def propose(self, context: list[int], k: int) -> Proposal:
        """Up to `k` guesses for the tokens after `context`."""
        raise NotImplementedError

    def observe(self, index: int, hidden: mx.array) -> None:
        """The target's final hidden states [L, D] for context positions index .. index + L - 1
        (only called when `needs_hidden`; positions a later pass covers again are superseded)."""

    def forget(self) -> None:
        """Drop anything kept from earlier generations (a draft model's cache), e.g. to time a cold start."""

    def fork(self) -> "Proposer":
        """The same proposer for another generation running beside this one (a server's requests):
        its models shared, its per-generation state (caches, n-gram index) its own."""
        clone = copy.copy(self)
        clone.forget()
        clone.start([], SamplingParams(temperature=0.0))
        return clone


def _leaves(layer) -> list:
    """The cache objects one layer's cache is made of: itself, or the parts of a composite
    (`AttentionSSMCache`: a KV part and a recurrent part)."""
    parts = [v for v in vars(layer).values() if hasattr(v, "can_trim")]
    return [leaf for part in parts for leaf in _leaves(part)] if parts else [layer]


class CacheRewind:
    """Steps a model's cache back to an earlier length, whatever kinds of cache its layers hold.

    `mark()` before a pass whose tokens may be withdrawn: it snapshots the parts that cannot trim
    (recurrent states; cheap, they share arrays the layers never modify in place). `rewind_to(n)`
    then trims every part when all of them can, and otherwise sends every part back to the mark
    (trimming the KV parts, restoring the snapshots): it returns the length reached, which may be
    shorter than asked (the caller feeds the difference again), or None when neither is possible."""

    def __init__(self, cache: list):
        self.cache = cache
        self.snapshot: tuple[int, list] | None = None

    def leaves(self) -> list:
        return [leaf for layer in self.cache for leaf in _leaves(layer)]

    def mark(self) -> None:
        # A KV part can always trim what it stored since (its buffers keep it); an empty part costs
        # nothing to copy. Copying a KV part would pin its buffer and turn the next in-place update
        # into a full copy, so only the parts that cannot trim are copied.
        self.snapshot = (cache_offset(self.cache),
                         [None if leaf.offset > 0 and leaf.can_trim(1) else leaf.copy() for leaf in self.leaves()])

    def rewind_to(self, length: int) -> int | None:
        offset = cache_offset(self.cache)
        if length >= offset:
            return offset
        leaves = self.leaves()
        if all(leaf.can_trim(offset - length) for leaf in leaves):
            for leaf in leaves:
                leaf.trim(offset - length)
            return length
        if self.snapshot is None or self.snapshot[0] > length:
            return None
        back_to, copies = self.snapshot
        if not all(copy is not None or leaf.can_trim(leaf.offset - back_to) for leaf, copy in zip(leaves, copies)):
            return None
        for leaf, copy in zip(leaves, copies):
            if copy is None:
                leaf.trim(leaf.offset - back_to)
            else:
                vars(leaf).update(vars(copy))
        # The restored parts now share the snapshot's arrays, which later updates may replace: the
        # snapshot is spent.
        self.snapshot = None
        return back_to


class DraftLength:
    """How many tokens to ask the proposer for, from the acceptance rate and costs measured so far.

    With each guess accepted with probability a (independently: the usual model), a proposal of k
    tokens yields (1 - a^(k+1)) / (1 - a) tokens from one target pass over k + 1 tokens, and costs
    that pass plus k proposed tokens. The k in 0..most that maximises tokens per second wins; k = 0
    is plain decoding. a is estimated from decayed counts (recent text matters most) around a prior
    of 1/2, and the decay runs on plain steps too, so after a stretch without guesses the estimate
    drifts back up and proposals are tried again. Pass costs are measured per pass size; sizes not
    measured yet are interpolated, and a size past the largest measured is assumed to cost what
    that one does (optimism, which gets it tried and measured)."""

    def __init__(self, most: int, adaptive: bool = True, memory: float = 0.9, smoothing: float = 0.7):
        self.most, self.adaptive, self.memory, self.smoothing = most, adaptive, memory, smoothing
        self.accepted = self.rejected = 0.0
        self.pass_seconds: dict[int, float] = {}  # tokens in a target pass -> seconds (moving average)
        self.propose_seconds = 0.0  # per proposed token

    @property
    def acceptance(self) -> float:
        return (self.accepted + 1.0) / (self.accepted + self.rejected + 2.0)

    def next(self, room: int) -> int:
        """k for the next proposal; `room`: the most tokens still wanted after the pending one."""
        most = min(self.most, room)
        if most <= 0:
            return 0
        if not self.adaptive:
            return most
        a = min(self.acceptance, 0.999)
        best, best_rate = 0, 1.0 / self._cost(1)
        for k in range(1, most + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / (self._cost(k + 1) + k * self.propose_seconds)
            if rate > best_rate:
                best, best_rate = k, rate
        return best

    def _cost(self, tokens: int) -> float:
        """Seconds for a target pass over `tokens` tokens: measured, else interpolated between the
        nearest measured sizes, else the nearest one's (1 before any measurement)."""
        if not self.pass_seconds:
            return 1.0
        below = max((n for n in self.pass_seconds if n <= tokens), default=None)
        above = min((n for n in self.pass_seconds if n >= tokens), default=None)
        if below is None or above is None or below == above:
            return self.pass_seconds[above if below is None else below]
        low, high = self.pass_seconds[below], self.pass_seconds[above]
        return low + (high - low) * (tokens - below) / (above - below)

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else self.smoothing * old + (1 - self.smoothing) * new

    def record(self, proposed: int, accepted: int, pass_tokens: int, pass_seconds: float,
               propose_seconds: float) -> None:
        """A verification pass of `pass_tokens` tokens checked `proposed` guesses, kept `accepted`."""
        self.accepted = self.memory * self.accepted + accepted
        self.rejected = self.memory * self.rejected + (1 if accepted < proposed else 0)
        self.pass_seconds[pass_tokens] = self._average(self.pass_seconds.get(pass_tokens), pass_seconds)
        if proposed:
            self.propose_seconds = self._average(self.propose_seconds, propose_seconds / proposed)

    def record_plain(self, seconds: float) -> None:
        """A plain one-token step took `seconds`."""
        self.accepted *= self.memory
        self.rejected *= self.memory
        self.pass_seconds[1] = self._average(self.pass_seconds.get(1), seconds)


class _Target:
    """The target model with its cache, fed from a context of token ids.

    The cache holds positions [0, offset); `base` of them come from before this generation (a chat's
    earlier turns), whose ids are `context[:start]` as far as the caller knows them. So context
    index i is cache position i - start + base."""

    def __init__(self, model, cache: list, start: int, observer: Proposer | None):
        self.model, self.cache, self.start, self.observer = model, cache, start, observer
        self.base = cache_offset(cache)
        self.rewind = CacheRewind(cache)

    @property
    def held(self) -> int:
        """How many context tokens the cache holds."""
        return cache_offset(self.cache) - self.base + self.start

    def forward(self, tokens: mx.array) -> mx.array:
        """Logits [L, vocab] for `tokens` [L] fed after what the cache holds."""
        if self.observer is None:
            return self.model(tokens[None], self.cache)[0]
        index = self.held
        hidden = self.model.model(tokens[None], self.cache)
        self.observer.observe(index, hidden[0])
        return self.model.output(hidden)[0]

    def rewind_to(self, held: int) -> int:
        """Rewind the cache to hold `held` context tokens (or fewer, see CacheRewind); the count held."""
        reached = self.rewind.rewind_to(held - self.start + self.base)
        if reached is None:  # a pass is always marked first, so this is a bug, not a user error
            raise RuntimeError("speculative decoding could not rewind the cache")
        return reached - self.base + self.start


class SpeculativeDecoder:
    """Speculative decoding settings for `stream_generate(..., speculative=...)`: a proposer, the
    most tokens one proposal may hold (`num_draft`), and whether that adapts to the acceptance."""

    def __init__(self, proposer: Proposer, num_draft: int | None = None, adaptive: bool = True):
        if num_draft is not None and num_draft < 1:
            raise OrchardError(f"the number of draft tokens must be at least 1, got {num_draft}")
        self.proposer = proposer
        self.num_draft = num_draft or proposer.default_draft
        self.adaptive = adaptive

    def tokens(self, model, prompt: Sequence[int], cache: list, sampling: SamplingParams, processors: list,
               stats, prefix_ids: Sequence[int] = (), prefill_step: int = 512,
               on_prefill_progress: Callable[[int, int], None] | None = None,
               max_new: int | None = None, matcher=None) -> Iterator[int]:
        """Endless stream of token ids after `prompt`, like `generate_tokens`, speculating.

        `stats` (a GenerationStats) gets the counts: draft_tokens, accepted_tokens, target_passes.
        `max_new` bounds the proposals (no guesses beyond what the caller will take). `matcher` (a
        `constrain.TokenMatcher`) masks every row of a pass, as it masks plain decoding. When the
        consumer stops, the cache is left holding the prompt and exactly the tokens handed out, as
        plain decoding leaves it (a chat keeps it for the next turn)."""
        return _Run(self, model, list(prompt), cache, sampling, processors, stats, list(prefix_ids),
                    prefill_step, on_prefill_progress, max_new, matcher).tokens()


class _Run:
    """One speculative generation (the state `SpeculativeDecoder.tokens` iterates over)."""

    def __init__(self, decoder: SpeculativeDecoder, model, prompt: list[int], cache: list,
                 sampling: SamplingParams, processors: list, stats, prefix: list[int], prefill_step: int,
                 on_prefill_progress, max_new: int | None, matcher):
        self.proposer = decoder.proposer
        self.length = DraftLength(decoder.num_draft, decoder.adaptive)
        self.context = prefix + prompt  # every token decided so far
        self.prompt_end = len(self.context)
        self.target = _Target(model, cache, len(prefix), self.proposer if self.proposer.needs_hidden else None)
        self.sampling, self.processors, self.stats = sampling, processors, stats
        self.sampler = make_sampler(sampling)
        self.greedy = sampling.temperature == 0
        self.prefill_step, self.on_prefill_progress = prefill_step, on_prefill_progress
        self.max_new, self.matcher = max_new, matcher
        self.emitted = 0  # tokens handed to the consumer
        self._propose_seconds = 0.0  # what the last proposal took

    # -- the loop ---------------------------------------------------------------------------

    def tokens(self) -> Iterator[int]:
        from mlxmodels.generate import prefill

        target = self.target
        self.proposer.start(list(self.context), self.sampling)  # before the prefill, which MTP observes
        prompt = mx.array(self.context[target.held:], dtype=mx.uint32)
        prefill(lambda inputs, cache: target.forward(inputs[0]), prompt, target.cache, self.prefill_step,
                self.on_prefill_progress)
        proposal = None
        try:
            while True:
                if proposal is None or not proposal.tokens:
                    proposal = self._propose()
                if proposal.tokens:
                    decided = self._verify(proposal)
                    proposal = None
                else:
                    decided = []
                    proposal = yield from self._plain()
                for token in decided:
                    self.emitted += 1
                    yield token
        except GeneratorExit:
            self._settle()
            raise

    def _room(self) -> int:
        """Guesses still worth making: the pending token and the guesses stay within `max_new`."""
        if self.max_new is None:
            return self.length.most
        return self.max_new - (len(self.context) - self.prompt_end) - 1

    def _propose(self) -> Proposal:
        k = self.length.next(self._room())
        if k == 0:
            return NO_PROPOSAL
        began = time.perf_counter()
        proposal = self.proposer.propose(self.context, k)
        self._propose_seconds = time.perf_counter() - began
        return Proposal(proposal.tokens[:k], None if proposal.probs is None else proposal.probs[:k])

    def _plain(self) -> Iterator[int]:
        """Pipelined one-token steps, as `generate_tokens` runs them, until the proposer offers
        something; returns that proposal (or None: propose afresh).

        Step t + 1's forward pass is queued before token t is read (the choice of token t + 1, which
        a grammar mask or the processors' history may need token t for, is queued after), so the
        proposer is asked one token late: its guesses for after token t are checked once t's
        successor u is known, and kept (minus their first) when the first guess was u."""
        from mlxmodels.generate import TokenChooser

        target, context, matcher = self.target, self.context, self.matcher
        chooser = TokenChooser(self.sampler, self.processors,
                               mx.array(context, dtype=mx.uint32) if self.processors else None)

        def choose(logits: mx.array) -> mx.array:
            return chooser(logits, None if matcher is None else matcher.mask())

        token = choose(target.forward(mx.array(context[target.held:], dtype=mx.uint32))[-1:])
        mx.async_eval(token)
        last = time.perf_counter()
        while True:
            logits = target.forward(token)[-1:]
            mx.async_eval(logits)
            context.append(token.item())
            if matcher is not None:
                matcher.advance(context[-1])
            now = time.perf_counter()
            self.length.record_plain(now - last)
            last = now
            self.stats.target_passes += 1
            self.emitted += 1
            yield context[-1]
            following = choose(logits)
            mx.async_eval(following)
            proposal = self._propose()
            if proposal.tokens:
                context.append(following.item())
                if matcher is not None:
                    matcher.advance(context[-1])
                self.stats.target_passes += 1
                self.emitted += 1
                yield context[-1]
                return proposal.after_first() if proposal.tokens[0] == context[-1] else None
            token = following

    def _verify(self, proposal: Proposal) -> list[int]:
        """One target pass over the pending tokens and the guesses: the tokens it decides (the
        accepted guesses and one of the target's own), with the cache rolled back to match."""
        target, context = self.target, self.context
        pending = context[target.held:]
        masks = None
        if self.matcher is not None:
            proposal, masks = self._grammar_masks(proposal)
        guesses = proposal.tokens
        target.rewind.mark()
        began = time.perf_counter()
        logits = target.forward(mx.array(pending + guesses, dtype=mx.uint32))[len(pending) - 1:]
        if self.processors:
            logits = self._processed(logits, guesses)
        if masks is not None:
            logits = apply_token_mask(logits, masks)
        accepted, token = (accept_greedy(logits, guesses) if self.greedy
                           else accept_sampled(logits, proposal, self.sampling))
        self.length.record(len(guesses), accepted, len(pending) + len(guesses), time.perf_counter() - began,
                           self._propose_seconds)
        self.stats.draft_tokens += len(guesses)
        self.stats.accepted_tokens += accepted
        self.stats.target_passes += 1
        decided = guesses[:accepted] + [token]
        # The cache holds pending + guesses; keep everything but the rejected guesses (the new
        # token, as always, stays pending).
        target.rewind_to(len(context) + accepted)
        context.extend(decided)
        if self.matcher is not None:
            for value in decided:
                self.matcher.advance(value)
        return decided

    def _grammar_masks(self, proposal: Proposal) -> tuple[Proposal, mx.array]:
        """The guesses the grammar allows (up to, not including, one that would end the output:
        nothing may be checked after it), and the mask [n + 1, words] for each row of the pass."""
        matcher = self.matcher
        masks, allowed = [], 0
        for guess in proposal.tokens[: matcher.valid_prefix(proposal.tokens)]:
            masks.append(matcher.mask())
            matcher.advance(guess)
            allowed += 1
            if matcher.finished:
                masks.pop()
                allowed -= 1
                matcher.rollback(1)
                break
        masks.append(matcher.mask())
        matcher.rollback(allowed)
        kept = Proposal(proposal.tokens[:allowed], None if proposal.probs is None else proposal.probs[:allowed])
        return kept, mx.concatenate(masks)

    def _processed(self, logits: mx.array, guesses: list[int]) -> mx.array:
        """Each row through the logits processors, with the context it was computed in."""
        rows = []
        for i in range(logits.shape[0]):
            row = logits[i : i + 1]
            history = mx.array(self.context + guesses[:i], dtype=mx.uint32)
            for process in self.processors:
                row = process(history, row)
            rows.append(row)
        return mx.concatenate(rows)

    def _settle(self) -> None:
        """Make the cache hold the context up to the last token handed out, as plain decoding's
        does (it feeds each token as it hands it out), so a chat can keep it."""
        target = self.target
        wanted = self.prompt_end + self.emitted
        held = target.held
        if held > wanted:
            held = target.rewind_to(wanted)
        if held < wanted:
            target.forward(mx.array(self.context[held:wanted], dtype=mx.uint32))
        mx.eval(cache_state(target.cache))


def accept_greedy(logits: mx.array, guesses: list[int]) -> tuple[int, int]:
    """Greedy verification of one sequence's guesses: logits [n + 1, vocab] (processed and masked),
    the row before each guess and one after the last. (guesses kept, the target's token after them)."""
    best = argmax(logits).tolist()
    accepted = 0
    while accepted < len(guesses) and guesses[accepted] == best[accepted]:
        accepted += 1
    return accepted, best[accepted]


def accept_sampled(logits: mx.array, proposal: Proposal, sampling: SamplingParams, key=None) -> tuple[int, int]:
    """The rejection rule (module docstring) on one sequence's guesses, logits as in `accept_greedy`:
    (guesses kept, the token drawn after them). `key` (an `mx.random.key`): the randomness of a
    seeded request in a batch (the scheduler's); None: MLX's global generator."""
    draw, last = (None, None) if key is None else mx.random.split(key)
    p = mx.softmax(filtered_logits(logits, sampling), axis=-1)  # [n + 1, vocab]
    vocab, n = p.shape[-1], len(proposal.tokens)
    guesses = mx.array(proposal.tokens, dtype=mx.uint32)
    q = None
    if proposal.probs is None:
        q_guess = mx.ones((n,))
    else:
        q = _width(proposal.probs.astype(mx.float32), vocab)
        q_guess = mx.take_along_axis(q, mx.minimum(guesses, vocab - 1)[:, None], axis=-1)[:, 0]
    # A guess outside the target's vocabulary (a draft with a larger output layer) has p = 0.
    p_guess = mx.take_along_axis(p[:n], mx.minimum(guesses, vocab - 1)[:, None], axis=-1)[:, 0]
    p_guess = mx.where(guesses < vocab, p_guess, 0.0)
    keep = (mx.random.uniform(shape=(n,), key=draw) * q_guess < p_guess).tolist()
    accepted = keep.index(False) if False in keep else n
    if accepted == n:
        return n, mx.random.categorical(mx.log(p[n]), key=last).item()
    if q is None:
        residual = mx.where(mx.arange(vocab) == guesses[accepted], 0.0, p[accepted])
    else:
        residual = mx.maximum(p[accepted] - q[accepted], 0.0)
    # p = q up to rounding leaves no mass to draw from; rejection then had probability ~0 anyway.
    residual = mx.where(residual.sum() > 0, residual, p[accepted])
    return accepted, mx.random.categorical(mx.log(residual), key=last).item()


def _width(probs: mx.array, vocab: int) -> mx.array:
    """Proposal distributions [n, V'] over the target's `vocab` ids: a draft's output layer may be
    padded to a different size than the target's (mass beyond the target's ids cannot be accepted)."""
    if probs.shape[-1] == vocab:
        return probs
    if probs.shape[-1] > vocab:
        return probs[:, :vocab]
    return mx.concatenate([probs, mx.zeros((probs.shape[0], vocab - probs.shape[-1]))], axis=-1)
