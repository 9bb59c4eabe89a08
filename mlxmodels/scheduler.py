"""Continuous batching: one scheduler owns the model and every cache, and serves many requests at once.

Each iteration (`step`):
1. requests that finished or were cancelled leave the running batch (their caches go to the prefix
   cache), new requests are admitted up to `max_batch`, each starting from the longest cached prefix
   of its prompt (`PrefixCache`);
2. up to `prefill_step` tokens of admitted prompts are prefilled, each prompt alone in its own
   per-sequence cache, so running streams wait for at most that many between two of their tokens; a
   prompt prefilled up to its last token joins the batch;
3. one decode step runs for the whole batch: the model is called on [B, 1] inputs (so the weights are
   read once for all rows) with the batched cache (`mlxmodels/batch.py`), and each row samples with
   its own settings (`sample_rows`);
4. the previous step's tokens are read and handed out (detokenized, checked against each request's
   stop strings and token budget). Decoding is pipelined as in `generate_tokens`: step t+1 is queued
   before step t's tokens are read, so Python work overlaps the model's.

A request with a constraint (`Request.constraint`, JSON schema or grammar) has its row's logits
masked by its own matcher before sampling; while such a row runs, steps are not pipelined (its next
mask needs the token in flight).

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

from mlxmodels.batch import batch_caches, batch_state, extend_batch, extract_row, select_rows
from mlxmodels.cache import can_trim_cache, copy_cache
from mlxmodels.constrain import apply_token_mask, batch_mask
from mlxmodels.errors import OrchardError
from mlxmodels.generate import _StopStrings, prefill
from mlxmodels.prefix_cache import PrefixCache
from mlxmodels.sampling import SamplingParams, make_logits_processors, sample_rows

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

    def next_key(self):
        if self.key is None:
            return None
        self.key, sub = mx.random.split(self.key)
        return sub

    def usage(self) -> Usage:
        return Usage(len(self.request.prompt), self.cached, self.completion_tokens, self.ttft)


def _materialize(model) -> None:
    """Evaluate every array the model holds, parameters or not (RoPE periods, tables): MLX evaluates
    an array only on the thread whose stream built it, and the scheduler thread did not build these."""
    from mlx.utils import tree_flatten

    arrays = [a for _, module in model.named_modules() for _, a in tree_flatten(dict(module))
              if isinstance(a, mx.array)]
    mx.eval(arrays)


class Scheduler:
    def __init__(self, model, tokenizer, *, max_batch: int = 8, max_queue: int = 64, prefill_step: int = 256,
                 prefix_cache: PrefixCache | None = None, make_cache: Callable[[], list] | None = None):
        if max_batch < 1 or max_queue < 0 or prefill_step < 1:
            raise OrchardError("max_batch and prefill_step must be at least 1, max_queue at least 0")
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
        while True:
            with self._lock:
                idle = not self._all_sequences() and self._in_flight is None
                if idle and self._closing:
                    break
                if idle:
                    self._lock.wait(timeout=1.0)
                    continue
            try:
                self.step()
            except Exception as e:  # a failing step must not take the server down
                self._fail_everything(e)

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
        if self._in_flight is not None and any(s.matcher is not None for s in (*self._rows, *self._joining)):
            # A constrained row's next mask needs the token in flight: no pipelining while one runs.
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
                    cache = extract_row(self._batch, i)
                    mx.async_eval(batch_state(cache))
                    self.prefix_cache.insert(s.request.prompt + s.generated, cache)
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
        """Up to `prefill_step` prompt tokens, oldest admitted prompt first, each prompt up to its last
        token (which the batch step feeds). Chunks end where messages end, so caches that cannot
        rewind are snapshotted there."""
        budget = self.prefill_step
        while self._prefilling and budget > 0:
            s = self._prefilling[0]
            prompt = s.request.prompt
            end = len(prompt) - 1
            if s.done < end:
                stop = min(end, s.done + budget)
                stop = min([b for b in s.request.boundaries if s.done < b < stop] or [stop])
                ids = mx.array(prompt[s.done : stop + 1], dtype=mx.uint32)
                prefill(self.model, ids, s.cache, step=stop - s.done)  # feeds all but the last id given
                budget -= stop - s.done
                s.done = stop
                # A snapshot where the prompt ends (the same prompt again reuses it; if the cache that
                # the request ends with can rewind to it, that one replaces it), and where a message
                # ends when the cache cannot rewind to there later.
                if self.prefix_cache is not None and (
                        stop == end or (stop in s.request.boundaries and not can_trim_cache(s.cache, stop))):
                    self.prefix_cache.insert(prompt[:stop], copy_cache(s.cache))
            if s.done == end:
                self._prefilling.pop(0)
                self._joining.append(s)

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
        logits = self.model(self._inputs[:, None], self._batch)[:, -1, :]
        rows = list(self._rows)
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
            if not s.generated:
                s.ttft = now - s.submitted
            s.generated.append(token)
            if token in self.eos:
                self._finish(s, "stop")
                continue
            if s.matcher is not None:
                s.matcher.advance(token)
            s.completion_tokens += 1
            text, hit = s.text.add(token)
            logprob = None
            if s.request.logprobs is not None:
                top = [] if len(details) < 3 else sorted(zip(details[1][i], details[2][i]), key=lambda p: -p[1])
                logprob = [TokenLogprob(token, details[0][i], top[: s.request.logprobs])]
            if hit:
                self._finish(s, "stop", text, [token], logprob, stop_string=True)
            elif s.completion_tokens >= s.request.max_tokens:
                self._finish(s, "length", text, [token], logprob)
            else:
                self._emit(s, Output(text, [token], logprob))

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
