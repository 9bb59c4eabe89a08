"""Speculative decoding through `orchard serve` (not part of the test suite: no timing is asserted).

    python tests/bench_serve_speculative.py single [--rounds 2]
        The copy task (assets/bench_rewrite.txt as the chat message, greedy, up to 256 tokens), one
        streaming client: "speculative": false, the server's prompt lookup, and `prediction` = the
        text to copy, in turn on one server (`--prompt-lookup 4`); then a story (assets/bench_story.txt,
        nothing to copy) without and with lookup. Decode tok/s and guesses kept.

    python tests/bench_serve_speculative.py batch [--clients 2,4,8]
        C concurrent clients (128-token answers), all copying or half copying and half writing a story
        (assets/bench_story.txt): aggregate tok/s with and without speculation, on a server started
        with `--speculate-up-to 64` so every row may guess.

Both check that every answer is the same text with and without speculation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).parent))
from test_serve import Server  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "assets"
COPY = (ASSETS / "bench_rewrite.txt").read_text()
STORY = (ASSETS / "bench_story.txt").read_text()
PLAIN = {"speculative": False}


def ask(client, prompt: str, extra: dict, max_tokens: int) -> dict:
    began, first, usage, pieces = time.perf_counter(), None, None, []
    for chunk in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens,
            stream=True, stream_options={"include_usage": True}, extra_body=extra):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    end = time.perf_counter()
    d = usage.completion_tokens_details
    return {"tokens": usage.completion_tokens, "wall": end - began,
            "decode": (usage.completion_tokens - 1) / (end - first),
            "kept": None if d is None else (d.accepted_prediction_tokens, d.rejected_prediction_tokens),
            "text": "".join(pieces)}


def single(client, rounds: int) -> None:
    original = COPY.split("\n\n", 1)[1]
    modes = {"plain": (COPY, PLAIN), "lookup": (COPY, {}),
             "prediction": (COPY, {"prediction": {"type": "content", "content": original}}),
             "story plain": (STORY, PLAIN), "story lookup": (STORY, {})}
    results = {mode: [] for mode in modes}
    for r in range(rounds):
        for mode, (prompt, extra) in modes.items():
            out = ask(client, prompt, extra, 256)
            results[mode].append(out)
            print(f"round {r + 1} {mode}: {out['tokens']} tokens, decode {out['decode']:.1f} tok/s, kept/rejected "
                  f"{out['kept']}", flush=True)
    for mode, outs in results.items():
        mean = statistics.mean(o["decode"] for o in outs)
        base = statistics.mean(o["decode"] for o in results["story plain" if "story" in mode else "plain"])
        print(f"{mode}: mean decode {mean:.1f} tok/s, {mean / base:.2f}x plain")
    for task in ("story", ""):
        texts = {o["text"] for mode, outs in results.items() if ("story" in mode) == bool(task) for o in outs}
        print(f"{task or 'copy'}: same text: {len(texts) == 1}")


def batch(client, clients: list[int]) -> None:
    for c in clients:
        for mix in ("copy", "mixed"):
            prompts = [COPY if mix == "copy" or i % 2 == 0 else STORY for i in range(c)]
            rates, texts = [], []
            for extra in (PLAIN, {}):
                began = time.perf_counter()
                with ThreadPoolExecutor(c) as pool:
                    outs = list(pool.map(lambda p: ask(client, p, extra, 128), prompts))
                rates.append(sum(o["tokens"] for o in outs) / (time.perf_counter() - began))
                texts.append([o["text"] for o in outs])
            print(f"{c} clients, {mix}: plain {rates[0]:.1f} tok/s, lookup {rates[1]:.1f} tok/s, "
                  f"{rates[1] / rates[0]:.2f}x, same text {texts[0] == texts[1]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("single", "batch"))
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", default="2,4,8")
    args = parser.parse_args()
    if args.model is None:
        from mlxmodels.default_model import ensure_default_model

        args.model = str(ensure_default_model())
    server = Server(["--model", args.model, "--model-name", "m", "--prompt-lookup", "4", "--speculate-up-to", "64",
                     "--quiet"])
    try:
        client = openai.OpenAI(base_url=server.base, api_key="none", max_retries=0, timeout=600)
        ask(client, "hi", {}, 4)
        for prompt in (COPY, STORY):  # cached prompts for every run alike
            ask(client, prompt, PLAIN, 2)
        if args.what == "single":
            single(client, args.rounds)
        else:
            batch(client, [int(c) for c in args.clients.split(",")])
    finally:
        server.stop()


if __name__ == "__main__":
    main()
