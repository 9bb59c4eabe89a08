"""What a conversion cost: perplexity and next-token KL divergence on a short shipped text.

Both models read the same tokens (the converted model's tokenizer on `assets/calibration.txt`,
public-domain English). Perplexity is exp(mean negative log-likelihood of each next token); the KL
divergence KL(source || converted) of the two next-token distributions, averaged over positions,
measures how far the quantized model's predictions moved, whatever the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import mlx.core as mx

DEFAULT_TOKENS = 256  # enough for stable numbers on small models, a few seconds on a CPU


@dataclass
class Quality:
    tokens: int
    perplexity_source: float
    perplexity_converted: float
    mean_kl: float  # nats per token


def calibration_text() -> str:
    return resources.files("orchard_assets").joinpath("calibration.txt").read_text()


def calibration_ids(tokenizer, max_tokens: int = DEFAULT_TOKENS) -> list[int]:
    return list(tokenizer.encode(calibration_text()))[:max_tokens]


def log_probs(model, ids: list[int]) -> mx.array:
    """log softmax of the model's logits for every position of `ids`, float32, shape [L, V]."""
    logits = model(mx.array([ids]))[0].astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def perplexity(logp: mx.array, ids: list[int]) -> float:
    targets = mx.array(ids[1:])
    nll = -mx.take_along_axis(logp[:-1], targets[:, None], axis=-1).mean()
    return math.exp(nll.item())


def mean_kl(logp_source: mx.array, logp_converted: mx.array) -> float:
    """Mean over positions of sum_v p(v) (log p(v) - log q(v)), p the source's distribution."""
    kl = (mx.exp(logp_source) * (logp_source - logp_converted)).sum(axis=-1)
    return max(kl.mean().item(), 0.0)  # float rounding can give -1e-9 for identical models


def compare(source_model, converted_model, ids: list[int]) -> Quality:
    if len(ids) < 2:
        raise ValueError("need at least two tokens to measure perplexity")
    p = log_probs(source_model, ids)
    mx.eval(p)
    q = log_probs(converted_model, ids)
    mx.eval(q)
    return Quality(len(ids), perplexity(p, ids), perplexity(q, ids), mean_kl(p, q))
