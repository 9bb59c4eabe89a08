"""Choosing the next token: temperature, top-k, top-p, min-p, and a repetition penalty.

Samplers map logits [B, vocab] (float32) to token ids [B]. Temperature 0 is greedy (argmax), which
is what parity tests compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from mlxmodels.errors import OrchardError
from mlxmodels.layers.ops import argmax


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_context: int = 64
    seed: int | None = None

    def validate(self) -> "SamplingParams":
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top-p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top-k must be >= 0 (0 disables it), got {self.top_k}"),
            (0 <= self.min_p < 1, f"min-p must be in [0, 1), got {self.min_p}"),
            (self.repetition_penalty > 0, f"repetition penalty must be > 0, got {self.repetition_penalty}"),
        ]
        for ok, message in checks:
            if not ok:
                raise OrchardError(message)
        return self


def make_sampler(p: SamplingParams):
    if p.temperature == 0:
        return argmax

    def sample(logits: mx.array) -> mx.array:
        return mx.random.categorical(filtered_logits(logits, p), axis=-1)

    return sample


def filtered_logits(logits: mx.array, p: SamplingParams) -> mx.array:
    """The logits a temperature > 0 sampler draws from (temperature, top-k, min-p, top-p applied;
    dropped tokens at -inf): their softmax is the sampled distribution, which speculative decoding's
    rejection rule needs as such. Works row by row on [..., vocab]."""
    logits = logits.astype(mx.float32) / p.temperature
    floor = mx.array(-math.inf, dtype=logits.dtype)
    if p.top_k > 0 and p.top_k < logits.shape[-1]:
        kth = mx.sort(logits, axis=-1)[..., -p.top_k][..., None]
        logits = mx.where(logits < kth, floor, logits)
    if p.min_p > 0:
        threshold = logits.max(axis=-1, keepdims=True) + math.log(p.min_p)
        logits = mx.where(logits < threshold, floor, logits)
    if p.top_p < 1:
        order = mx.argsort(-logits, axis=-1)
        sorted_logits = mx.take_along_axis(logits, order, axis=-1)
        probs = mx.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        before = mx.cumsum(probs, axis=-1) - probs
        sorted_logits = mx.where(before >= p.top_p, floor, sorted_logits)
        inverse = mx.argsort(order, axis=-1)
        logits = mx.take_along_axis(sorted_logits, inverse, axis=-1)
    return logits


def make_logits_processors(p: SamplingParams) -> list:
    """Functions (tokens so far [N], logits [1, vocab]) -> logits, applied before sampling."""
    if p.repetition_penalty == 1.0:
        return []
    penalty, window = p.repetition_penalty, p.repetition_context

    def repetition(tokens: mx.array, logits: mx.array) -> mx.array:
        if tokens.size == 0:
            return logits
        recent = tokens[-window:]
        chosen = logits[:, recent]
        chosen = mx.where(chosen < 0, chosen * penalty, chosen / penalty)
        logits[:, recent] = chosen
        return logits

    return [repetition]


def sample_rows(logits: mx.array, rows: list[SamplingParams], keys: list) -> mx.array:
    """Token ids [B] for a batch of sequences decoding together: row i of `logits` [B, vocab] drawn
    with rows[i]'s settings (greedy rows take the argmax, as `make_sampler` does), its randomness from
    keys[i] (an `mx.random.key`: a seeded request draws the same whatever runs beside it) or, where
    that is None, from MLX's global generator. Rows with the same settings are filtered together."""
    tokens = argmax(logits)
    groups: dict = {}
    for i, p in enumerate(rows):
        if p.temperature > 0:
            groups.setdefault((p.temperature, p.top_k, p.min_p, p.top_p), (p, []))[1].append(i)
    vocab = logits.shape[-1]
    for p, members in groups.values():
        # Gumbel-max, which is how mx.random.categorical draws: argmax(logits + Gumbel noise).
        noise = mx.stack([mx.random.gumbel((vocab,), key=keys[i]) if keys[i] is not None
                          else mx.random.gumbel((vocab,)) for i in members])
        index = mx.array(members, dtype=mx.int32)
        tokens[index] = argmax(filtered_logits(logits[index], p) + noise).astype(tokens.dtype)
    return tokens
