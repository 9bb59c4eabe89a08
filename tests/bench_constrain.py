"""Benchmarks of constrained decoding on SmolLM2-135M (not part of the test suite: no timing is asserted).

    python tests/bench_constrain.py validity [--runs 20] [--first-seed 0] [--free-runs 20] [--max-tokens 400]
        Each of the 20 JSON Schemas in tests/fixtures/json_schemas.json, `--runs` samples (seeds) at
        temperature 0.7: how many parse and validate with `jsonschema`, constrained and unconstrained
        (the first --free-runs seeds), on the same prompts.

    python tests/bench_constrain.py overhead [--schemas 20] [--repeats 3]
        Single-sequence decode speed (`stream_generate`) with and without the schema, interleaved
        runs of the same prompt, and the grammar's own CPU time per token (mask + advance).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import mlx.core as mx  # noqa: E402

import mlxmodels  # noqa: E402
from mlxmodels.cache import copy_cache  # noqa: E402
from mlxmodels.constrain import Constraint, TokenMatcher  # noqa: E402
from mlxmodels.generate import encode_prompt, generate, prefill, stream_generate  # noqa: E402
from mlxmodels.sampling import SamplingParams  # noqa: E402
from test_constrain import SCHEMAS, schema_prompt  # noqa: E402


def prefilled(model, tokenizer, prompt: str):
    """The prompt read once (all but its last token, as `stream_generate` leaves it): each run decodes
    from a copy of this cache, so the runs of a schema share one prefill."""
    cache = model.make_cache()
    rest = prefill(model, mx.array(encode_prompt(tokenizer, prompt), dtype=mx.uint32), cache)
    return cache, rest.tolist()


def sample(model, tokenizer, start, max_tokens: int, seed: int, constraint=None) -> str:
    cache, rest = start
    text, _ = generate(model, tokenizer, rest, cache=copy_cache(cache), max_tokens=max_tokens,
                       sampling=SamplingParams(temperature=0.7, seed=seed), constraint=constraint)
    return text


def extract_json(text: str):
    """The JSON object in an unconstrained answer: the whole text, else a ```json fence, else the
    span from the first "{" to the last "}" (lenient, to credit the model where it can be)."""
    for candidate in (text, *re.findall(r"```(?:json)?\s*(.*?)```", text, re.S),
                      text[text.find("{"): text.rfind("}") + 1] if "{" in text else ""):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise ValueError("no JSON object")


def valid(texts: list[str], schema: dict, read) -> int:
    import jsonschema

    count = 0
    for text in texts:
        try:
            jsonschema.validate(read(text), schema)
            count += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    return count


def validity(args) -> None:
    """Rounds over the 20 schemas, one seed per round (seeds from --first-seed), so an interrupted
    run still covers every schema; unconstrained answers in the first --free-runs rounds."""
    model, tokenizer = mlxmodels.load()
    starts = {}
    # "the answer is the JSON" (json.loads on the whole text), and leniently (extract_json)
    totals = {"constrained": [0, 0], "unconstrained": [0, 0], "unconstrained, JSON found anywhere": [0, 0]}
    begin = time.perf_counter()
    for round_ in range(args.runs):
        seed = args.first_seed + round_
        for case in SCHEMAS:
            name = case["name"]
            if name not in starts:
                starts[name] = (prefilled(model, tokenizer, schema_prompt(tokenizer, case)),
                                Constraint.json_schema(case["schema"], name).compile(tokenizer))
            start, compiled = starts[name]
            text = sample(model, tokenizer, start, args.max_tokens, seed, compiled)
            ok = valid([text], case["schema"], json.loads)
            totals["constrained"][0] += ok
            totals["constrained"][1] += 1
            if not ok:
                print(f"INVALID {name} seed {seed}: {text!r}", flush=True)
            if round_ < args.free_runs:
                free = sample(model, tokenizer, start, args.max_tokens, seed)
                for key, read in (("unconstrained", json.loads), ("unconstrained, JSON found anywhere", extract_json)):
                    totals[key][0] += valid([free], case["schema"], read)
                    totals[key][1] += 1
        print(f"seed {seed} done ({time.perf_counter() - begin:.0f} s): " + " | ".join(
            f"{key}: {ok}/{total} valid" for key, (ok, total) in totals.items() if total), flush=True)


def overhead(args) -> None:
    model, tokenizer = mlxmodels.load()
    spent = {"time": 0.0, "calls": 0}
    mask, advance = TokenMatcher.mask, TokenMatcher.advance

    def timed(fn):
        def wrapper(self, *a):
            t = time.perf_counter()
            try:
                return fn(self, *a)
            finally:
                spent["time"] += time.perf_counter() - t
                spent["calls"] += fn is mask
        return wrapper

    TokenMatcher.mask, TokenMatcher.advance = timed(mask), timed(advance)
    plain_rates, constrained_rates, grammar_ms = [], [], []
    for case in SCHEMAS[: args.schemas]:
        prompt = schema_prompt(tokenizer, case)
        compiled = Constraint.json_schema(case["schema"], case["name"]).compile(tokenizer)
        for _ in range(args.repeats):
            for constraint in (None, compiled):
                spent.update(time=0.0, calls=0)
                for chunk in stream_generate(model, tokenizer, prompt, max_tokens=args.max_tokens, constraint=constraint,
                                             sampling=SamplingParams(temperature=0.7, seed=0)):
                    stats = chunk.stats
                if stats.generation_tokens < 8:
                    continue
                (constrained_rates if constraint else plain_rates).append(stats.generation_tps)
                if constraint:
                    grammar_ms.append(1000 * spent["time"] / spent["calls"])
        print(f"{case['name']}: plain {statistics.median(plain_rates[-args.repeats:]):.1f} tok/s, constrained "
              f"{statistics.median(constrained_rates[-args.repeats:]):.1f} tok/s, grammar "
              f"{statistics.median(grammar_ms[-args.repeats:]):.3f} ms/token", flush=True)
    plain, constrained = statistics.median(plain_rates), statistics.median(constrained_rates)
    grammar = statistics.median(grammar_ms)
    print(f"decode, median over runs: plain {plain:.1f} tok/s ({1000 / plain:.1f} ms/token), constrained "
          f"{constrained:.1f} tok/s ({1000 / constrained:.1f} ms/token): {100 * (plain / constrained - 1):+.1f}% time per token")
    print(f"grammar CPU work (mask + advance): median {grammar:.3f} ms/token = {100 * grammar * plain / 1000:.1f}% "
          "of a plain token's decode time (computed while the model runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    v = sub.add_parser("validity")
    v.add_argument("--runs", type=int, default=20, help="samples per schema (seeds)")
    v.add_argument("--first-seed", type=int, default=0)
    v.add_argument("--free-runs", type=int, default=20, help="of those, how many also unconstrained")
    v.add_argument("--max-tokens", type=int, default=400)
    o = sub.add_parser("overhead")
    o.add_argument("--schemas", type=int, default=20)
    o.add_argument("--repeats", type=int, default=3)
    o.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()
    validity(args) if args.what == "validity" else overhead(args)


if __name__ == "__main__":
    main()
