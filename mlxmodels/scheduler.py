"""Continuous batching: one scheduler owns the model and every cache, and serves many requests at once.

Each iteration (`step`):
1. requests that finished or were cancelled leave the running batch (their caches go to the prefix
   cache), new requests are admitted up to `max_batch`, each starting from the longest cached prefix
   of its prompt (`PrefixCache`);
2. up to `prefill_step` tokens of admitted prompts are prefilled into their per-sequence caches, so
   running streams wait for at most that many between two of their tokens; prompts arriving together
   are prefilled in one batched pass (a short prompt's prefill is mostly reading, or dequantizing,
   the weights: once for all of them); a prompt prefilled up to its last token joins the batch;
3. one decode step runs for the whole batch: the model is called on [B, 1] inputs (so the weights are
   read once for all rows) with the batched cache (`mlxmodels/batch.py`), and each row samples with
   its own settings (`sample_rows`);
4. the previous step's tokens are read and handed out (detokenized, checked against each request's
   stop strings and token budget). Decoding is pipelined as in `generate_tokens`: step t+1 is queued
   before step t's tokens are read, so Python work overlaps the model's.

A request with a constraint (`Request.constraint`, JSON schema or grammar) has its row's logits
masked by its own matcher before sampling; while such a row runs, steps are not pipelined (its next
mask needs the token in flight).

Speculative decoding (`Request.speculative`, mlxmodels/speculative.py) runs per row: before a step,
each speculating row asks its own proposer for up to k guesses (k from its own `DraftLength`), and
when any row has some, the step is one verification pass over the whole batch, each row fed its
pending token and its guesses, right-padded to the longest (rows without guesses are rows with
k = 0). Each row keeps its accepted prefix by the rule speculative.py uses for one sequence
(`accept_greedy` / `accept_sampled`), and the batched cache drops each row's rejected guesses and
padding (`batch.rewind_rows`). A model with recurrent state cannot drop tokens: a row that keeps
fewer than the pass fed goes back to the state before the pass, and its accepted tokens are fed
again at the start of its next pass, as speculative.py does. Constrained rows do not guess (they
decode one masked token per step, as without speculation; speculative.py, one sequence, does mask
each verified position).
While a row would ask for guesses, steps are not pipelined: its proposal needs the token in flight
(once its `DraftLength` turns guessing off, plain pipelined steps run until it turns it on again).
Speculation can be limited to batches of at most `speculate_up_to` rows: a batch already reads
the weights once for several tokens, and rows that guess nothing are padded through every pass
(measured in docs/performance.md, "Speculation in serve").

The scheduler runs on its own thread (`start`); `submit` and `cancel` may be called from any thread
and outputs are delivered through each request's callback, on the scheduler thread.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import mlx.core as mx

from mlxmodels.batch import (batch_caches, batch_state, batch_trims, caches_trim, extend_batch, extract_row,
                             mark_rows, rewind_rows, select_rows)
from mlxmodels.cache import can_trim_cache, cache_offset, copy_cache
from mlxmodels.constrain import apply_token_mask, batch_mask
from mlxmodels.errors import OrchardError
from mlxmodels.generate import _StopStrings, prefill
from mlxmodels.prefix_cache import PrefixCache
from mlxmodels.sampling import SamplingParams, make_logits_processors, sample_rows
from mlxmodels.speculative import NO_PROPOSAL, DraftLength, Proposal, accept_greedy, accept_sampled

MAX_TOP_LOGPROBS = 20  # as OpenAI's API


class Busy(OrchardError):
    """The queue is full: try again later."""


class Closed(OrchardError):
    """The scheduler is shutting down and takes no new requests."""


@dataclass
class Request:
    prompt: list[int]  # token ids, at least one
    max_tokens: int
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0))
    stop: Sequence[str] = ()
    logprobs: int | None = None  # None: none; n: the chosen token's log-probability and the n most likely
    # Prompt lengths at which a message of a chat ends: caches that cannot rewind are snapshotted
    # there, so a later request sharing those messages resumes from them.
    boundaries: Sequence[int] = ()
    # A `constrain.CompiledConstraint`: the answer must match it (each step's logits are masked).
    constraint: object | None = None
    # A `speculative.SpeculativeDecoder` with a proposer of this request's own (proposers keep
    # per-generation state): guesses checked in the batch's passes. None: plain decoding.
    speculative: object | None = None


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token, logprob), most likely first


@dataclass
class Usage:
    prompt_tokens: int
    cached_tokens: int  # of the prompt, reused from the prefix cache
    completion_tokens: int = 0
    ttft: float = 0.0  # seconds from submission to the first token
    # Speculating requests only (None otherwise): guesses proposed, and of those, kept.
    draft_tokens: int | None = None
    accepted_tokens: int | None = None


@dataclass
class Output:
    """What one request gets from one step: a piece of text (possibly empty) and the tokens behind
    it; the last one has `finish_reason` ("stop", "length", "cancelled" or "error") and `usage`."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None


class TextStream:
    """Token ids in, text out, for one generation: the streaming detokenizer and the stop strings.
    `add` returns (text safe to emit, whether a stop string was hit); `finish` the text held back."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.detokenizer = tokenizer.detokenizer  # a fresh one per access (mlx-lm's wrapper)
        self.detokenizer.reset()
        self.stops = _StopStrings(stop)

    def add(self, token: int) -> tuple[str, bool]:
        self.detokenizer.add_token(token)
        return self.stops.feed(self.detokenizer.last_segment)

    def finish(self) -> tuple[str, bool]:
        # The detokenizer may hold the last tokens' text back until now; a stop string that text
        # completes still ends the answer there, as it would have mid-stream.
        self.detokenizer.finalize()
        text, hit = self.stops.feed(self.detokenizer.last_segment)
        return (text, True) if hit else (text + self.stops.flush(), False)


class _Sequence:
    def __init__(self, request: Request, on_output: Callable[[Output], None], tokenizer):
        self.request = request
        self.on_output = on_output
        self.text = TextStream(tokenizer, request.stop)
        self.submitted = time.perf_counter()
        self.cache: list | None = None  # its own cache while prefilling
        self.cached = 0  # prompt tokens reused from the prefix cache
        self.done = 0  # prompt tokens in its cache
        self.generated: list[int] = []  # every token read for it (all fed back to the cache)
        self.completion_tokens = 0
        self.ttft = 0.0
        self.finished = False
        self.cancelled = False
        self.key = self.processors = self.history = None  # made on the scheduler thread (`admitted`)
        self.matcher = None
        self.pending: list[int] | None = None  # decided, not in the cache, when more than its one input
        self.length: DraftLength | None = None  # how many guesses to ask for (speculating rows)
        self.draft_tokens = self.accepted_tokens = 0
        self.stamp = 0.0  # when its last token was read (a plain step's duration, for `length`)
        self.propose_seconds = 0.0  # what its last proposal took

    def admitted(self) -> None:
        """MLX state of its own, made on the scheduler thread (MLX evaluates arrays only on the thread
        that made them; `submit` runs on the caller's)."""
        sampling = self.request.sampling
        self.key = None if sampling.seed is None else mx.random.key(sampling.seed)
        self.processors = make_logits_processors(sampling)
        if self.request.constraint is not None:
            self.matcher = self.request.constraint.matcher()
        # The ids the processors look back on (a repetition penalty): the prompt's last ones, then
        # each sampled token, appended lazily as in generate_tokens.
        if self.processors:
            self.history = mx.array(self.request.prompt[-sampling.repetition_context:], dtype=mx.uint32)
        spec = self.request.speculative
        if spec is not None and self.matcher is None:
            self.length = DraftLength(spec.num_draft, spec.adaptive)
            spec.proposer.start(list(self.request.prompt), sampling)

    def next_key(self):
        if self.key is None:
            return None
        self.key, sub = mx.random.split(self.key)
        return sub

    def usage(self) -> Usage:
        usage = Usage(len(self.request.prompt), self.cached, self.completion_tokens, self.ttft)
        if self.length is not None:
            usage.draft_tokens, usage.accepted_tokens = self.draft_tokens, self.accepted_tokens
        return usage

    def wants_guesses(self) -> bool:
        """Whether it would ask its proposer now (its `DraftLength` has not turned guessing off)."""
        return (self.length is not None and not self.finished and not self.cancelled
                and self.length.next(self.request.max_tokens - len(self.generated) - 1) > 0)

    def propose(self) -> Proposal:
        """Its guesses for the tokens after those decided (none when not speculating or finished)."""
        if not self.wants_guesses():
            return NO_PROPOSAL
        k = self.length.next(self.request.max_tokens - len(self.generated) - 1)
        began = time.perf_counter()
        proposal = self.request.speculative.proposer.propose(self.request.prompt + self.generated, k)
        self.propose_seconds = time.perf_counter() - began
        return Proposal(proposal.tokens[:k], None if proposal.probs is None else proposal.probs[:k])


def _materialize(model) -> None:
    """Evaluate every array the model holds, parameters or not (RoPE periods, tables): MLX evaluates
    an array only on the thread whose stream built it, and the scheduler thread did not build these."""
    from mlx.utils import tree_flatten

    arrays = [a for _, module in model.named_modules() for _, a in tree_flatten(dict(module))
              if isinstance(a, mx.array)]
    mx.eval(arrays)


class Scheduler:
    def __init__(self, model, tokenizer, *, max_batch: int = 8, max_queue: int = 64, prefill_step: int = 256,
                 prefix_cache: PrefixCache | None = None, make_cache: Callable[[], list] | None = None,
                 speculate_up_to: int | None = None):
        if max_batch < 1 or max_queue < 0 or prefill_step < 1:
            raise OrchardError("max_batch and prefill_step must be at least 1, max_queue at least 0")
        # Rows speculate only while the batch has at most this many (None: always).
        self.speculate_up_to = speculate_up_to
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue, self.prefill_step = max_batch, max_queue, prefill_step
        self.prefix_cache = prefix_cache
        self.make_cache = make_cache or model.make_cache
        self.eos = set(getattr(tokenizer, "eos_token_ids", None) or [])
        self._lock = threading.Condition()
        self._inbox: deque[_Sequence] = deque()  # submitted, not yet seen by the scheduler thread
        self._waiting: deque[_Sequence] = deque()
        self._prefilling: list[_Sequence] = []
        self._joining: list[_Sequence] = []
        self._rows: list[_Sequence] = []  # the batch, in cache row order
        # Admitted and not finished, wherever they are (prefilling, joining, in the batch): what
        # `running` reports, without reading lists the scheduler thread is moving sequences between.
        self._active: set[_Sequence] = set()
        self._batch: list | None = None
        self._inputs: mx.array | None = None  # each row's next input token [B]
        self._in_flight = None  # (rows, tokens, logprob arrays) of the step queued last
        self._thread: threading.Thread | None = None
        self._closing = False
        self.steps = 0
        self.peak_memory_gb = 0.0  # MLX's peak, read on the scheduler thread (for /health)
        _materialize(model)

    # -- any thread ----------------------------------------------------------------------------

    def submit(self, request: Request, on_output: Callable[[Output], None]) -> _Sequence:
        """Queue a request; `on_output` receives its outputs on the scheduler thread. Raises `Busy`
        when `max_batch` requests run and `max_queue` wait, `Closed` when shutting down."""
        if not request.prompt:
            raise OrchardError("the prompt is empty")
        if request.max_tokens < 1:
            raise OrchardError(f"max tokens must be at least 1, got {request.max_tokens}")
        request.sampling.validate()
        sequence = _Sequence(request, on_output, self.tokenizer)
        with self._lock:
            if self._closing:
                raise Closed("the server is shutting down")
            if self.load >= self.max_batch + self.max_queue:
                raise Busy(f"{self.max_batch} requests are running and {self.max_queue} waiting")
            self._inbox.append(sequence)
            self._lock.notify()
        return sequence

    def cancel(self, sequence: _Sequence) -> None:
        """Stop a request (its client left): its batch row and cache are freed at the next step."""
        with self._lock:
            sequence.cancelled = True
            self._lock.notify()

    @property
    def load(self) -> int:
        """Requests submitted and not finished (running or waiting)."""
        return len(self._inbox) + len(self._waiting) + len(self._active)

    @property
    def running(self) -> int:
        return len(self._active)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orchard-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Take no new requests, finish the ones running and waiting, then end the thread."""
        with self._lock:
            self._closing = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the scheduler thread ------------------------------------------------------------------

    def _all_sequences(self):
        return [*self._inbox, *self._waiting, *self._prefilling, *self._joining, *self._rows]

    def _run(self) -> None:
        from mlxmodels.api import release_thread

        try:
            self._loop()
        finally:
            release_thread()

    def _loop(self) -> None:
        from mlxmodels.api import warm_up

        warm_up(self.model)
        was_idle = True
        while True:
            with self._lock:
                idle = not self._all_sequences() and self._in_flight is None
                if idle and self._closing:
                    break
                if idle:
                    was_idle = True
                    self._lock.wait(timeout=1.0)
                    continue
                if was_idle:
                    was_idle = False
                    self._gather_burst()
            try:
                self.step()
            except Exception as e:  # a failing step must not take the server down
                self._fail_everything(e)

    def _gather_burst(self) -> None:
        """After an idle spell, let requests that arrive together (clients started at once) finish
        arriving, so that one batched prefill takes them all: wait while the inbox keeps growing,
        BURST_QUIET seconds at a time, BURST_WAIT at most. Called with the lock held."""
        deadline = time.monotonic() + self.BURST_WAIT
        count = len(self._inbox)
        while not self._closing and time.monotonic() < deadline:
            self._lock.wait(timeout=self.BURST_QUIET)
            if len(self._inbox) == count:
                return
            count = len(self._inbox)

    def step(self) -> None:
        """One iteration: retire, admit, a prefill chunk, one decode step, hand out tokens."""
        with self._lock:
            self._waiting.extend(self._inbox)
            self._inbox.clear()
        self._drop_cancelled()
        self._retire()
        self._admit()
        try:
            self._prefill()
        except Exception as e:  # this prompt failed (e.g. out of memory): it alone ends with the error
            s = self._prefilling.pop(0)
            s.finished, s.cache = True, None
            self._active.discard(s)
            self._emit(s, Output(finish_reason="error", usage=s.usage(), error=f"{type(e).__name__}: {e}"))
        speculating = self._may_speculate()
        if self._in_flight is not None and any(s.matcher is not None or (speculating and s.wants_guesses())
                                               or s.pending for s in (*self._rows, *self._joining)):
            # A constrained row's next mask, a speculating row's next proposal, need the token in
            # flight: no pipelining while one runs.
            previous, self._in_flight = self._in_flight, None
            self._collect(*previous)
        previous, self._in_flight = self._in_flight, self._launch()
        if previous is not None:
            self._collect(*previous)
        self.steps += 1
        self.peak_memory_gb = mx.get_peak_memory() / 1e9

    def _drop_cancelled(self) -> None:
        for queue in (self._waiting, self._prefilling, self._joining):
            for s in [s for s in queue if s.cancelled]:
                queue.remove(s)
                self._finish(s, "cancelled")
        for s in self._rows:
            if s.cancelled and not s.finished:
                self._finish(s, "cancelled")

    def _retire(self) -> None:
        """Finished rows leave the batch; what their caches hold goes to the prefix cache."""
        keep = [i for i, s in enumerate(self._rows) if not s.finished]
        if len(keep) == len(self._rows):
            return
        if self.prefix_cache is not None:
            for i, s in enumerate(self._rows):
                if s.finished:
                    # The pipelined decode has fed it every token read for it (see _collect).
                    # (A speculating row's cache may hold fewer: its pending tokens.)
                    cache = extract_row(self._batch, i)
                    mx.async_eval(batch_state(cache))
                    self.prefix_cache.insert((s.request.prompt + s.generated)[: cache_offset(cache)], cache)
        if keep:
            select_rows(self._batch, keep)
            self._inputs = self._inputs[mx.array(keep, dtype=mx.int32)]
            self._rows = [self._rows[i] for i in keep]
        else:
            self._batch, self._inputs, self._rows = None, None, []

    def _admit(self) -> None:
        while self._waiting and self.running < self.max_batch:
            s = self._waiting[0]
            self._active.add(s)  # before it leaves the queue: `load` never misses it in between
            self._waiting.popleft()
            s.admitted()
            prompt = s.request.prompt
            cache, s.cached = (None, 0) if self.prefix_cache is None else self.prefix_cache.lookup(prompt[:-1])
            s.cache = cache if cache is not None else self.make_cache()
            s.done = s.cached
            self._prefilling.append(s)

    def _prefill(self) -> None:
        """Up to `prefill_step` prompt tokens (more while no row decodes), oldest admitted prompt
        first, each prompt up to its last token (which the batch step feeds). Chunks end where
        messages end, so caches that cannot rewind are snapshotted there. Several prompts' chunks run
        as one batched pass (`_chunk_group`): the weights are read, or dequantized for a GEMM, once
        for all of them."""
        for s in [s for s in self._prefilling if s.done == len(s.request.prompt) - 1]:
            self._prefilling.remove(s)  # nothing to prefill: a one-token prompt, or all of it cached
            self._joining.append(s)
        # With no row decoding nobody waits on a longer pass: prompts arriving together (a burst)
        # are then prefilled in fewer, larger passes.
        budget = self.prefill_step * (1 if self._rows else self.IDLE_PREFILL_STEPS)
        while self._prefilling and budget > 0:
            chunks = []  # (sequence, stop): its prompt from s.done up to stop, next
            for s in self._prefilling:
                if budget <= 0:
                    break
                stop = min(len(s.request.prompt) - 1, s.done + budget)
                stop = min([b for b in s.request.boundaries if s.done < b < stop] or [stop])
                chunks.append((s, stop))
                budget -= stop - s.done
            self._prefill_chunks(chunks)

    def _prefill_chunks(self, chunks: list) -> None:
        while chunks:
            group = self._chunk_group(chunks)
            if len(group) == 1:
                s, stop = group[0]
                ids = mx.array(s.request.prompt[s.done : stop + 1], dtype=mx.uint32)
                prefill(self.model, ids, s.cache, step=stop - s.done)  # feeds all but the last id given
            else:
                self._prefill_together(group)
            for s, stop in group:
                s.done = stop
                end = len(s.request.prompt) - 1
                # A snapshot where the prompt ends (the same prompt again reuses it; if the cache that
                # the request ends with can rewind to it, that one replaces it), and where a message
                # ends when the cache cannot rewind to there later.
                if self.prefix_cache is not None and (
                        stop == end or (stop in s.request.boundaries and not can_trim_cache(s.cache, stop))):
                    self.prefix_cache.insert(s.request.prompt[:stop], copy_cache(s.cache))
                if s.done == end:
                    self._prefilling.remove(s)
                    self._joining.append(s)
            chunks = chunks[len(group):]

    IDLE_PREFILL_STEPS = 4  # prefill_step budgets per iteration while no row decodes
    BURST_QUIET = 0.003  # seconds without a new request that end a burst's arrival...
    BURST_WAIT = 0.03  # ...or at most this long after the first one (docs/serve.md)

    # A batched prefill pass computes every row up to the longest chunk: rows are added while the
    # padding stays at most this share of the tokens computed.
    MAX_PREFILL_PADDING = 0.25

    def _chunk_group(self, chunks: list) -> list:
        """The leading chunks that prefill well together: with recurrent state (which cannot drop
        padding) only chunks of the first one's length, else while padding stays small."""
        first, stop = chunks[0]
        length = stop - first.done
        trims = caches_trim(first.cache)
        group, real, longest = [chunks[0]], length, length
        for s, stop in chunks[1:]:
            n = stop - s.done
            if not trims and n != length:
                break
            padded = (len(group) + 1) * max(longest, n)
            if padded - (real + n) > self.MAX_PREFILL_PADDING * padded:
                break
            group.append((s, stop))
            real, longest = real + n, max(longest, n)
        return group

    def _prefill_together(self, group: list) -> None:
        """One pass over several prompts' chunks, right-padded to the longest: each row's padding is
        dropped from its cache afterwards, and each sequence gets its own cache back."""
        lengths = [stop - s.done for s, stop in group]
        L = max(lengths)
        rows = [s.request.prompt[s.done : stop] + [0] * (L - (stop - s.done)) for s, stop in group]
        batch = batch_caches([s.cache for s, _ in group])
        self.model(mx.array(rows, dtype=mx.uint32), batch)  # logits unused: never computed
        if L != min(lengths):
            rewind_rows(batch, [L - n for n in lengths])
        mx.eval(batch_state(batch))
        for i, (s, _) in enumerate(group):
            s.cache = extract_row(batch, i)

    def _launch(self):
        """Queue one decode step for every row (joining prompts feed their last token)."""
        if self._joining:
            joining, self._joining = self._joining, []
            more = batch_caches([s.cache for s in joining])
            inputs = mx.array([s.request.prompt[-1] for s in joining], dtype=mx.uint32)
            for s in joining:
                s.cache = None
            if self._batch is None:
                self._batch, self._inputs = more, inputs
            else:
                extend_batch(self._batch, more)
                self._inputs = mx.concatenate([self._inputs, inputs.astype(self._inputs.dtype)])
            self._rows += joining
        if not self._rows:
            return None
        if self._in_flight is None and any(s.length is not None or s.pending for s in self._rows):
            if self._speculate():
                return None
        rows = list(self._rows)
        logits = self._forward(self._inputs[:, None], [[0] for _ in rows])[:, -1, :]
        logits = self._processed(logits, rows)
        matchers = [None if s.finished else s.matcher for s in rows]
        if any(m is not None for m in matchers):
            logits = apply_token_mask(logits, batch_mask(matchers))
        tokens = sample_rows(logits, [s.request.sampling for s in rows], [s.next_key() for s in rows])
        for i, s in enumerate(rows):
            if s.processors:
                s.history = mx.concatenate([s.history, tokens[i : i + 1]])[-s.request.sampling.repetition_context:]
        logprobs = self._logprobs(logits, tokens, rows)
        self._inputs = tokens
        mx.async_eval(tokens, *logprobs, *batch_state(self._batch))
        return rows, tokens, logprobs

    def _speculate(self) -> bool:
        """A verification step (module docstring) when some row has guesses or pending tokens: every
        row's tokens are decided, the cache rolled back to match and the tokens handed out. False
        (nothing done) when no row has more than its one input: a plain step then runs."""
        rows = list(self._rows)
        allowed = self._may_speculate()
        inputs = self._inputs.tolist()
        pending = [s.pending or [inputs[i]] for i, s in enumerate(rows)]
        proposals = [s.propose() if allowed else NO_PROPOSAL for s in rows]
        fed = [len(p) + len(q.tokens) for p, q in zip(pending, proposals)]
        L = max(fed)
        if L == 1:
            return False
        trims = batch_trims(self._batch)
        mark = None if trims else mark_rows(self._batch)
        began = time.perf_counter()
        # Right-padded: a padded position is never accepted, its cache entry is dropped below.
        padded = [p + q.tokens + [0] * (L - n) for p, q, n in zip(pending, proposals, fed)]
        logits = self._forward(mx.array(padded, dtype=mx.uint32), [p + q.tokens for p, q in zip(pending, proposals)])
        results = []  # (decided tokens, logprobs) per row
        counts, pendings = [], []
        for i, (s, p, q) in enumerate(zip(rows, pending, proposals)):
            if s.finished:  # its tokens would be dropped: keep what it was fed
                accepted, decided, items = 0, [], None
            else:
                accepted, decided, items = self._decide(s, logits[i, len(p) - 1 : len(p) + len(q.tokens)], q)
            keep = len(p) + accepted
            if trims or keep == L:
                counts.append(L - keep)
                pendings.append(decided[-1:] or p[-1:])
            else:  # back to the mark; what it kept is fed again next time
                counts.append(L)
                pendings.append(p + decided)
            results.append((decided, items))
        rewind_rows(self._batch, counts, mark)
        self._inputs = mx.array([p[-1] for p in pendings], dtype=mx.uint32)
        mx.async_eval(self._inputs, *batch_state(self._batch))
        now = time.perf_counter()
        for s, p, q, (decided, items) in zip(rows, pendings, proposals, results):
            s.pending = p if len(p) > 1 else None
            if s.finished:
                continue
            if s.length is not None:
                s.length.record(len(q.tokens), len(decided) - 1, L, now - began, s.propose_seconds)
                s.stamp = now
            s.draft_tokens += len(q.tokens)
            s.accepted_tokens += len(decided) - 1
            self._deliver(s, decided, items, now)
        return True

    def _may_speculate(self) -> bool:
        """Whether rows may guess in the next step (`speculate_up_to`)."""
        return self.speculate_up_to is None or len(self._rows) + len(self._joining) <= self.speculate_up_to

    def _forward(self, inputs: mx.array, fed: list[list]) -> mx.array:
        """Logits [B, L, vocab] of the batch fed `inputs` [B, L]; rows whose proposer reads the
        model's hidden states (multi-token prediction) get theirs, for the len(fed[i]) real tokens."""
        watching = [i for i, s in enumerate(self._rows)
                    if s.length is not None and not s.finished and s.request.speculative.proposer.needs_hidden]
        if not watching:
            return self.model(inputs, self._batch)
        layer = self._batch[0]
        held = list(getattr(layer, "offsets", None) or layer.attention.offsets)  # each row's first fed position
        hidden = self.model.model(inputs, self._batch)
        for i in watching:
            self._rows[i].request.speculative.proposer.observe(held[i], hidden[i, : len(fed[i])])
        return self.model.output(hidden)

    def _decide(self, s: _Sequence, logits: mx.array, proposal: Proposal) -> tuple[int, list[int], list | None]:
        """Row logits [n + 1, vocab] (the row before each guess and one after the last) -> (guesses
        kept, the tokens decided, their logprobs if asked), by speculative.py's rules."""
        guesses = proposal.tokens
        if s.processors:
            rows = []
            for j in range(logits.shape[0]):
                row = logits[j : j + 1]
                history = mx.concatenate([s.history, mx.array(guesses[:j], dtype=mx.uint32)])
                for process in s.processors:
                    row = process(history, row)
                rows.append(row)
            logits = mx.concatenate(rows)
        if s.matcher is not None:  # constrained rows make no guesses: one row
            logits = apply_token_mask(logits, s.matcher.mask())
        sampling = s.request.sampling
        if not guesses:
            accepted, token = 0, sample_rows(logits, [sampling], [s.next_key()]).item()
        elif sampling.temperature == 0:
            accepted, token = accept_greedy(logits, guesses)
        else:
            accepted, token = accept_sampled(logits, proposal, sampling, s.next_key())
        decided = guesses[:accepted] + [token]
        if s.processors:
            s.history = mx.concatenate([s.history, mx.array(decided, dtype=mx.uint32)])[
                -sampling.repetition_context:]
        items = None
        if s.request.logprobs is not None:
            arrays = self._logprobs(logits[: accepted + 1], mx.array(decided), [s] * len(decided))
            details = [a.tolist() for a in arrays]
            items = [self._logprob_item(s, details, j, token) for j, token in enumerate(decided)]
        return accepted, decided, items

    @staticmethod
    def _logprob_item(s: _Sequence, details: list, i: int, token: int) -> TokenLogprob:
        top = [] if len(details) < 3 else sorted(zip(details[1][i], details[2][i]), key=lambda p: -p[1])
        return TokenLogprob(token, details[0][i], top[: s.request.logprobs])

    @staticmethod
    def _processed(logits: mx.array, rows: list) -> mx.array:
        """Each row's logits processors (`make_logits_processors`) applied to its own row."""
        for i, s in enumerate(rows):
            if s.processors:
                row = logits[i : i + 1]
                for process in s.processors:
                    row = process(s.history, row)
                logits[i : i + 1] = row
        return logits

    @staticmethod
    def _logprobs(logits: mx.array, tokens: mx.array, rows: list) -> tuple:
        wanted = [s.request.logprobs for s in rows if s.request.logprobs is not None]
        if not wanted:
            return ()
        logits = logits.astype(mx.float32)
        scores = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        chosen = mx.take_along_axis(scores, tokens[:, None].astype(mx.int32), axis=-1)[:, 0]
        k = min(max(wanted), MAX_TOP_LOGPROBS)
        if k == 0:
            return (chosen,)
        top = mx.argpartition(-scores, k - 1, axis=-1)[:, :k]
        return chosen, top, mx.take_along_axis(scores, top, axis=-1)

    def _collect(self, rows: list, tokens: mx.array, logprobs: tuple) -> None:
        """Hand out a step's tokens (the step after it is already queued)."""
        values = tokens.tolist()
        details = [a.tolist() for a in logprobs]
        now = time.perf_counter()
        for i, (s, token) in enumerate(zip(rows, values)):
            if s.finished:
                continue  # finished (or cancelled) after this step was queued: its token is dropped
            if s.length is not None:
                if s.stamp:
                    s.length.record_plain(now - s.stamp)
                s.stamp = now
            logprob = None if s.request.logprobs is None else [self._logprob_item(s, details, i, token)]
            self._deliver(s, [token], logprob, now)

    def _deliver(self, s: _Sequence, tokens: list[int], logprobs: list | None, now: float) -> None:
        """Hand out a row's newly decided tokens (one, or several from a verification pass) up to
        whichever ends it first: the end-of-sequence token, a stop string, max_tokens. Every token
        stays in `generated` (the cache may hold those past the end)."""
        if not s.generated:
            s.ttft = now - s.submitted
        s.generated += tokens
        text, emitted = "", []
        for token in tokens:
            if token in self.eos:
                self._finish(s, "stop", text, emitted, logprobs and logprobs[: len(emitted)])
                return
            if s.matcher is not None:
                s.matcher.advance(token)
            s.completion_tokens += 1
            piece, hit = s.text.add(token)
            text += piece
            emitted.append(token)
            kept = logprobs and logprobs[: len(emitted)]
            if hit:
                self._finish(s, "stop", text, emitted, kept, stop_string=True)
                return
            if s.completion_tokens >= s.request.max_tokens:
                self._finish(s, "length", text, emitted, kept)
                return
        self._emit(s, Output(text, emitted, logprobs))

    def _finish(self, s: _Sequence, reason: str, text: str = "", tokens: list | None = None,
                logprobs: list | None = None, stop_string: bool = False) -> None:
        s.finished = True
        s.cache = None
        self._active.discard(s)
        if reason != "cancelled" and not stop_string:
            tail, hit = s.text.finish()
            text += tail
            if hit:
                reason = "stop"
        self._emit(s, Output(text, tokens or [], logprobs, reason, s.usage()))

    @staticmethod
    def _emit(s: _Sequence, output: Output) -> None:
        try:
            s.on_output(output)
        except Exception:  # a broken consumer must not stop the others
            s.cancelled = True

    def _fail_everything(self, error: Exception) -> None:
        """A step raised (e.g. out of memory): every request in flight ends with the error, the batch
        is dropped, and the scheduler goes on with the next requests."""
        message = f"{type(error).__name__}: {error}"
        traceback.print_exc()
        for s in [*self._prefilling, *self._joining, *self._rows]:
            if not s.finished:
                s.finished = True
                self._emit(s, Output(finish_reason="error", usage=s.usage(), error=message))
        self._prefilling, self._joining, self._rows = [], [], []
        self._active.clear()
        self._batch = self._inputs = self._in_flight = None
