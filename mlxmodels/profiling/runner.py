"""Running a benchmark: tests × repetitions over Orchard and any comparison engines, interleaved.

With comparison engines the repetitions alternate (A B C A B C …) within each test, so slow drifts
of a noisy machine (other processes, thermal throttling) hit every engine alike and the ratio of
their means stays meaningful even when the absolute figures wander.
"""

from __future__ import annotations

import random
from importlib import resources
from typing import Callable

from mlxmodels.profiling.engines import Test
from mlxmodels.profiling.roofline import roofline
from mlxmodels.profiling.stats import ratio, summarize

FIGURES = ("ttft_ms", "ttft_cached_ms", "prefill_tps", "decode_tps")
WARMUP_GEN = 4  # tokens decoded by the untimed warm-up of each test


def make_tests(prompts: list[int], gens: list[int], depths: list[int], pairs: list[tuple[int, int]] = ()) -> list[Test]:
    """llama-bench's test matrix: every pp and every tg at every depth, plus combined pp+tg pairs."""
    tests = []
    for d in depths:
        tests += [Test(p, 0, d) for p in prompts]
        tests += [Test(0, g, d) for g in gens]
        tests += [Test(p, g, d) for p, g in pairs]
    return tests


def prompt_tokens(tokenizer, vocab_size: int, n: int, seed: int = 0) -> list[int]:
    """`n` token ids: the bench prompt text (repeated as needed) when there is a tokenizer, else
    seeded random ids (synthetic models have no vocabulary to speak of)."""
    if tokenizer is None:
        rng = random.Random(seed)
        return [rng.randrange(vocab_size) for _ in range(n)]
    text = resources.files("orchard_assets").joinpath("bench_prompt.txt").read_text()
    ids = list(tokenizer.encode(text))
    return (ids * (n // len(ids) + 1))[:n]


def _aggregate(test: Test, samples: list[dict], weight_bytes: int, bandwidth: float | None) -> dict:
    row = {"test": test.name, "n_prompt": test.n_prompt, "n_gen": test.n_gen, "depth": test.depth,
           "batch": samples[0].get("batch", 1)}
    for figure in FIGURES:
        row[figure] = summarize(s[figure] for s in samples)
    peaks = [s["peak_memory_gb"] for s in samples if s["peak_memory_gb"] is not None]
    row["peak_memory_gb"] = max(peaks) if peaks else None
    row["peak_rss_gb"] = max(s["peak_rss_gb"] for s in samples)
    # The context cache at the end of the test (the same every repetition); Orchard's engine only.
    row["cache_bytes"] = samples[-1].get("cache_bytes")
    row["quantized_matmul"] = samples[-1].get("quantized_matmul")  # Orchard's op layer choices, per run
    if "tokens_per_pass" in samples[0]:  # speculative decoding (acceptance: None while nothing was guessed)
        row["acceptance"] = summarize(s["acceptance"] for s in samples)
        row["tokens_per_pass"] = summarize(s["tokens_per_pass"] for s in samples)
    if row["decode_tps"] is not None:
        kv = sum(s["kv_read_bytes"] for s in samples) / len(samples)
        # One decode step reads the weights once for the whole batch, plus every row's KV cache.
        batch = samples[0].get("batch", 1)
        row["roofline"] = roofline((weight_bytes + kv) / batch, row["decode_tps"]["mean"], bandwidth)
    else:
        row["roofline"] = None
    row["samples"] = samples
    return row


def run_tests(engines: list, tests: list[Test], repetitions: int, prompt: list[int], context: list[int],
              weight_bytes: list[int], bandwidth: float | None,
              progress: Callable[[str], None] = lambda s: None) -> list[list[dict]]:
    """Per engine, one aggregated row per test. Each test gets an untimed warm-up per engine."""
    rows: list[list[dict]] = [[] for _ in engines]
    for t, test in enumerate(tests):
        warm = Test(test.n_prompt, min(test.n_gen, WARMUP_GEN), test.depth)
        for engine in engines:
            progress(f"[{t + 1}/{len(tests)}] {test.name}: warm-up ({engine.name})")
            engine.run(warm, prompt, context)
        samples: list[list[dict]] = [[] for _ in engines]
        for r in range(repetitions):
            for e, engine in enumerate(engines):
                progress(f"[{t + 1}/{len(tests)}] {test.name}: run {r + 1}/{repetitions} ({engine.name})")
                samples[e].append(engine.run(test, prompt, context))
        for e in range(len(engines)):
            rows[e].append(_aggregate(test, samples[e], weight_bytes[e], bandwidth))
    return rows


def add_ratios(ours: list[dict], theirs: list[dict], engine: str) -> None:
    """Orchard / `engine` per figure, on each of our rows under `ratios[engine]`. For TTFT lower is
    better, so a ratio below 1 there (and above 1 for tokens/s) means Orchard is faster."""
    for a, b in zip(ours, theirs):
        a.setdefault("ratios", {})[engine] = {f: ratio(a[f], b[f]) for f in FIGURES}
