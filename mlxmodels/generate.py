"""Token generation: chunked prefill, pipelined decode, stop conditions and honest stats.

`stream_generate` yields `GenerationChunk`s: text pieces as they become printable, then a last
chunk carrying `GenerationStats`. Decode is pipelined: the next token's graph is queued with
`mx.async_eval` before the current one is handed to the caller, so Python work overlaps compute.

A cache passed in may already hold a prefix (a chat's earlier turns): only the new prompt tokens
are prefilled on top of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import mlx.core as mx

from mlxmodels.cache import cache_offset, cache_state
from mlxmodels.constrain import apply_token_mask
from mlxmodels.errors import ContextLengthError, OrchardError
from mlxmodels.sampling import SamplingParams, make_logits_processors, make_sampler


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens prefilled by this call
    cached_tokens: int = 0  # tokens already in the cache before this call (reused prefix)
    prompt_tps: float = 0.0
    ttft: float = 0.0  # seconds from the call to the first generated token
    generation_tokens: int = 0
    generation_tps: float = 0.0
    peak_memory_gb: float = 0.0
    finish_reason: str = ""  # "stop" (EOS), "stop_string", "length", "context", "cancelled"
    tokens: list = field(default_factory=list)  # the generated token ids
    stop_token: int | None = None  # the EOS id that ended it: fed to the cache, not in `tokens`
    # Speculative decoding (mlxmodels/speculative.py): guesses checked, guesses kept, and the
    # target passes that decided the tokens (plain decoding: one per token).
    draft_tokens: int = 0
    accepted_tokens: int = 0
    target_passes: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.generation_tokens / self.target_passes if self.target_passes else 1.0


@dataclass
class GenerationChunk:
    text: str
    token: int | None = None
    stats: GenerationStats | None = None  # set on the last chunk only

    @property
    def finished(self) -> bool:
        return self.stats is not None


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    # Chat templates usually write BOS themselves; don't add a second one.
    bos = getattr(tokenizer, "bos_token", None)
    add_special = bos is None or not prompt.startswith(bos)
    return list(tokenizer.encode(prompt, add_special_tokens=add_special))


def context_length(model) -> int:
    info = getattr(model, "info", None)
    return getattr(info, "context_length", 0) or 0


def prefill(model, tokens: mx.array, cache: list, step: int = 512, on_progress=None) -> mx.array:
    """Run all but the last prompt token through the model in chunks; return the remaining tokens.

    Chunking bounds the attention scores' memory; evaluating the cache after each chunk keeps the
    lazy graph small.
    """
    total = tokens.shape[0]
    done = 0
    while total - done > 1:
        n = min(step, total - done - 1)
        model(tokens[None, done : done + n], cache)
        mx.eval(cache_state(cache))
        done += n
        if on_progress is not None:
            on_progress(done, total)
    return tokens[done:]


class _StopStrings:
    """Finds stop strings in streamed text, holding back any tail that might begin one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was hit)."""
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            at = min(i for i, _ in hits)
            out, self.pending = self.pending[:at], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class TokenChooser:
    """Picks each next token from the logits: the logits processors (which see the context so far),
    then a grammar's mask, then the sampler. One per generation: it keeps the context the processors
    need, growing it by each token it picks."""

    def __init__(self, sampler: Callable, processors: list, history: mx.array | None):
        self.sampler, self.processors = sampler, processors
        self.history = history if processors else None

    def __call__(self, logits: mx.array, mask: mx.array | None = None) -> mx.array:
        for process in self.processors:
            logits = process(self.history, logits)
        if mask is not None:
            logits = apply_token_mask(logits, mask)
        token = self.sampler(logits)
        if self.processors:
            self.history = mx.concatenate([self.history, token])
        return token


def generate_tokens(
    model,
    prompt: mx.array,
    cache: list,
    sampler: Callable,
    processors: list,
    prefill_step: int = 512,
    on_prefill_progress=None,
    prior: mx.array | None = None,
    matcher=None,
) -> Iterator[int]:
    """Endless stream of token ids after `prompt` (the caller decides when to stop).

    `prior`: ids of tokens the cache already holds, before `prompt`; the logits processors see them
    as the start of the context (a repetition penalty looks back across the cached prefix).
    `matcher`: a `constrain.TokenMatcher`; only tokens its grammar allows are sampled."""
    choose = TokenChooser(sampler, processors, prompt if prior is None else mx.concatenate([prior, prompt]))
    remaining = prefill(model, prompt, cache, prefill_step, on_prefill_progress)

    def forward(inputs: mx.array) -> mx.array:
        return model(inputs[None], cache)[:, -1, :]

    if matcher is not None:
        yield from _constrained_decode(forward, choose, remaining, matcher)
        return
    token = choose(forward(remaining))
    mx.async_eval(token)
    while True:
        following = choose(forward(token))
        mx.async_eval(following)
        yield token.item()
        token = following


def _constrained_decode(forward, choose, remaining: mx.array, matcher) -> Iterator[int]:
    """The decode loop with a grammar mask, pipelined so the mask costs little.

    Token t+1's mask needs token t's value, so sampling waits for the CPU; the model need not. The
    forward pass of step t+1 is queued (its own `async_eval`, so waiting for token t does not wait
    for it) before token t is read; the grammar then advances and computes the next mask on this
    thread while the model computes, and sampling is queued behind that forward pass."""
    logits = forward(remaining)
    mx.async_eval(logits)
    token = choose(logits, matcher.mask())  # the first mask is computed during the last prefill step
    mx.async_eval(token)
    while True:
        logits = forward(token)
        mx.async_eval(logits)
        value = token.item()
        yield value
        matcher.advance(value)
        token = choose(logits, matcher.mask())
        mx.async_eval(token)


def stream_generate(
    model,
    tokenizer,
    prompt: str | list[int],
    max_tokens: int = 256,
    sampling: SamplingParams | None = None,
    stop: Sequence[str] = (),
    cache: list | None = None,
    prefill_step: int = 512,
    on_prefill_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    prefix_ids: Sequence[int] = (),
    constraint=None,
    speculative=None,
) -> Iterator[GenerationChunk]:
    """Generate a completion of `prompt` (text, or token ids) piece by piece.

    `cache` (from `make_cache(model)`) may hold earlier tokens; `prompt` then holds only the new
    ones, and `prefix_ids` the ids of those earlier tokens, so that the repetition penalty sees the
    whole context, as it would had everything been one prompt. `should_stop` is polled between
    tokens (a UI's stop button). `constraint` (a `constrain.Constraint`, compiled or not, or a
    `TokenMatcher` already advanced over a forced prefix) limits the output to a JSON schema, regex
    or grammar; an invalid one raises `ConstraintError` before any model work. `speculative` (a
    `speculative.SpeculativeDecoder`) has a proposer guess tokens that the model verifies several
    at a time: the same output, sooner.
    """
    sampling = (sampling or SamplingParams(temperature=0.0)).validate()
    matcher = _matcher_for(constraint, tokenizer)
    if max_tokens < 1:
        raise OrchardError(f"max tokens must be at least 1, got {max_tokens}")
    ids = encode_prompt(tokenizer, prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise OrchardError("the prompt is empty")
    if cache is None:
        cache = model.make_cache()
    cached = cache_offset(cache)
    limit = context_length(model)
    if limit and cached + len(ids) >= limit:
        raise ContextLengthError(
            f"the prompt is {cached + len(ids)} tokens, the model's context is {limit} tokens "
            "(shorten it, or start a new conversation)"
        )
    budget = min(max_tokens, limit - cached - len(ids)) if limit else max_tokens

    if sampling.seed is not None:
        mx.random.seed(sampling.seed)
    mx.reset_peak_memory()
    stats = GenerationStats(prompt_tokens=len(ids), cached_tokens=cached)
    eos = set(getattr(tokenizer, "eos_token_ids", None) or [])
    detokenizer = tokenizer.detokenizer
    detokenizer.reset()
    stops = _StopStrings(stop)

    processors = make_logits_processors(sampling)
    # The processors look back `repetition_context` tokens at most: older cached ids do not matter.
    prior = list(prefix_ids)[-sampling.repetition_context:] if processors else []

    start = time.perf_counter()
    if speculative is None:
        tokens = generate_tokens(
            model, mx.array(ids, dtype=mx.uint32), cache, make_sampler(sampling), processors, prefill_step,
            on_prefill_progress, mx.array(prior, dtype=mx.uint32) if prior else None, matcher,
        )
    else:
        tokens = speculative.tokens(model, ids, cache, sampling, processors, stats, prefix_ids=prefix_ids,
                                    prefill_step=prefill_step, on_prefill_progress=on_prefill_progress,
                                    max_new=budget, matcher=matcher)
    first_at = None
    reason = "length"
    try:
        for n, token in enumerate(tokens):
            if first_at is None:
                first_at = time.perf_counter()
                stats.ttft = first_at - start
            if token in eos:
                reason, stats.stop_token = "stop", token
                break
            stats.tokens.append(token)
            detokenizer.add_token(token)
            text, hit = stops.feed(detokenizer.last_segment)
            if text:
                yield GenerationChunk(text, token)
            if hit:
                reason = "stop_string"
                break
            if len(stats.tokens) >= budget:
                reason = "length" if budget == max_tokens else "context"
                break
            if should_stop is not None and should_stop():
                reason = "cancelled"
                break
    finally:
        tokens.close()
    end = time.perf_counter()

    detokenizer.finalize()
    tail = ""
    if reason != "stop_string":
        # The detokenizer may hold the last tokens' text back until now; a stop string that text
        # completes ends the answer there, as it would have mid-stream.
        tail, hit = stops.feed(detokenizer.last_segment)
        if hit:
            reason = "stop_string"
        else:
            tail += stops.flush()
    stats.generation_tokens = len(stats.tokens)
    if speculative is None:
        stats.target_passes = stats.generation_tokens
    stats.finish_reason = reason
    prefill_time = stats.ttft
    stats.prompt_tps = stats.prompt_tokens / prefill_time if prefill_time > 0 else 0.0
    decode_time = end - first_at if first_at is not None else 0.0
    decoded = max(stats.generation_tokens - 1, 0)
    stats.generation_tps = decoded / decode_time if decode_time > 0 and decoded else 0.0
    stats.peak_memory_gb = mx.get_peak_memory() / 1e9
    yield GenerationChunk(tail, None, stats)


def _matcher_for(constraint, tokenizer):
    """A fresh `TokenMatcher` for a Constraint or CompiledConstraint; a matcher as it is."""
    if constraint is None or hasattr(constraint, "advance"):
        return constraint
    if hasattr(constraint, "compile"):
        constraint = constraint.compile(tokenizer)
    return constraint.matcher()


def generate(model, tokenizer, prompt, **kwargs) -> tuple[str, GenerationStats]:
    """The whole completion as one string, and its stats."""
    pieces, stats = [], None
    for chunk in stream_generate(model, tokenizer, prompt, **kwargs):
        pieces.append(chunk.text)
        stats = chunk.stats or stats
    return "".join(pieces), stats
