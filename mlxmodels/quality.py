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
# The most of physical memory one model may take as the check evaluates it (the OS, the caller and
# the activations need the rest).
MEMORY_FRACTION = 0.5


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


def model_bytes(model) -> int:
    """What a loaded model's parameters take once evaluated (known before: loading is lazy)."""
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def measure(source_path, converted_path, tokens: int = DEFAULT_TOKENS) -> Quality:
    """`compare` for a conversion on disk, within a memory budget.

    A conversion streams its source; evaluating it loads it whole, in the compute dtype (float32
    on the CPU backend: an 8B bfloat16 model takes 32 GB). So both models load lazily with their
    quantized layers kept quantized, one is evaluated at a time (the source is released before the
    converted model runs), and a model that would take more than MEMORY_FRACTION of physical memory
    is not evaluated: an OrchardError says so, in one line.
    """
    import mlxmodels
    from mlxmodels.cpu_weights import physical_memory
    from mlxmodels.errors import OrchardError

    converted, tokenizer = mlxmodels.load(converted_path, cpu_weights="quantized")
    source = mlxmodels.load_model(source_path, cpu_weights="quantized")
    total = physical_memory()
    for name, size, dtype in (("source", model_bytes(source), source.info.compute_dtype),
                              ("converted", model_bytes(converted), converted.info.compute_dtype)):
        if total and size > MEMORY_FRACTION * total:
            raise OrchardError(f"the {name} model takes {size / 1e9:.1f} GB evaluated in {dtype}, over "
                               f"{MEMORY_FRACTION:.0%} of this machine's {total / 1e9:.1f} GB")
    ids = calibration_ids(tokenizer, tokens)
    if len(ids) < 2:
        raise OrchardError("the calibration text is under two tokens for this tokenizer")
    p = log_probs(source, ids)
    mx.eval(p)
    del source  # its weights go before the converted model's are read
    mx.clear_cache()
    q = log_probs(converted, ids)
    mx.eval(q)
    return Quality(len(ids), perplexity(p, ids), perplexity(q, ids), mean_kl(p, q))
