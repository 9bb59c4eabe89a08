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


def generate_tokens(
    model,
    prompt: mx.array,
    cache: list,
    sampler: Callable,
    processors: list,
    prefill_step: int = 512,
    on_prefill_progress=None,
) -> Iterator[int]:
    """Endless stream of token ids after `prompt` (the caller decides when to stop)."""
    history = prompt
    remaining = prefill(model, prompt, cache, prefill_step, on_prefill_progress)

    def step(inputs: mx.array) -> mx.array:
        nonlocal history
        logits = model(inputs[None], cache)[:, -1, :]
        for process in processors:
            logits = process(history, logits)
        token = sampler(logits)
        if processors:
            history = mx.concatenate([history, token])
        return token

    token = step(remaining)
    mx.async_eval(token)
    while True:
        following = step(token)
        mx.async_eval(following)
        yield token.item()
        token = following


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
) -> Iterator[GenerationChunk]:
    """Generate a completion of `prompt` (text, or token ids) piece by piece.

    `cache` (from `make_cache(model)`) may hold earlier tokens; `prompt` then holds only the new
    ones. `should_stop` is polled between tokens (a UI's stop button).
    """
    sampling = (sampling or SamplingParams(temperature=0.0)).validate()
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

    start = time.perf_counter()
    tokens = generate_tokens(
        model, mx.array(ids, dtype=mx.uint32), cache, make_sampler(sampling),
        make_logits_processors(sampling), prefill_step, on_prefill_progress,
    )
    first_at = None
    reason = "length"
    try:
        for n, token in enumerate(tokens):
            if first_at is None:
                first_at = time.perf_counter()
                stats.ttft = first_at - start
            if token in eos:
                reason = "stop"
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
    tail = stops.feed(detokenizer.last_segment)[0] + stops.flush() if reason != "stop_string" else ""
    stats.generation_tokens = len(stats.tokens)
    stats.finish_reason = reason
    prefill_time = stats.ttft
    stats.prompt_tps = stats.prompt_tokens / prefill_time if prefill_time > 0 else 0.0
    decode_time = end - first_at if first_at is not None else 0.0
    decoded = max(stats.generation_tokens - 1, 0)
    stats.generation_tps = decoded / decode_time if decode_time > 0 and decoded else 0.0
    stats.peak_memory_gb = mx.get_peak_memory() / 1e9
    yield GenerationChunk(tail, None, stats)


def generate(model, tokenizer, prompt, **kwargs) -> tuple[str, GenerationStats]:
    """The whole completion as one string, and its stats."""
    pieces, stats = [], None
    for chunk in stream_generate(model, tokenizer, prompt, **kwargs):
        pieces.append(chunk.text)
        stats = chunk.stats or stats
    return "".join(pieces), stats
