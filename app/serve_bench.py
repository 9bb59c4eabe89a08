"""`orchard bench serve`: load a server with concurrent streaming clients and measure what they get.

    orchard bench serve [--model M | --url URL] [-c 1,8] [-n 16] [-p 128] [-g 64] [--shared-prefix N]
                        [--kv-bits B] [--compare mlx-lm] [--json]

Starts `orchard serve` on the model (or uses a running server at --url), then for each client count
C runs the same M streaming completions, C at a time, and reports aggregate generation tokens/s, the
time to first token (p50/p95/p99) and the gap between tokens (p50/p95/p99), and failed requests.
`--compare mlx-lm` runs `mlx_lm.server` on the same model with the same load, one engine after the
other, and prints Orchard's ratio. With `--shared-prefix N` every prompt starts with the same N tokens
(a long system prompt), and the first request's time to first token is reported apart from the others'.
`--kv-bits` is passed to the `orchard serve` it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.served import api_base, auth_headers, served_models

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 300


def register(actions) -> None:
    from app.options import add_kv_bits_option, add_model_option

    p = actions.add_parser("serve", help="load-test a server: aggregate tok/s, TTFT and inter-token latency",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_option(p)
    p.add_argument("--url", default=None, help="benchmark a running OpenAI-compatible server (its root or /v1 "
                                               "URL) instead of starting `orchard serve`")
    p.add_argument("--api-key", default=None, help="with --url: the server's API key")
    p.add_argument("-c", "--clients", default="1,8", metavar="N[,N…]",
                   help="concurrent streaming clients; a list runs each (default 1,8)")
    p.add_argument("-n", "--requests", type=int, default=16, metavar="M", help="requests per client count (default 16)")
    p.add_argument("-p", "--prompt-tokens", type=int, default=128, metavar="N", help="prompt length (default 128)")
    p.add_argument("-g", "--max-tokens", type=int, default=64, metavar="N", help="answer length asked for (default 64)")
    p.add_argument("--shared-prefix", type=int, default=0, metavar="N",
                   help="tokens every prompt starts with (default 0: prompts share nothing)")
    add_kv_bits_option(p, "per request; passed to the orchard serve it starts")
    p.add_argument("--compare", default=None, choices=("mlx-lm",), help="also run mlx_lm.server on the same load")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=handle)


# -- the load ------------------------------------------------------------------------------------------


@dataclass
class Result:
    ok: bool
    tokens: int = 0
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)  # seconds between consecutive text chunks
    error: str = ""


async def _one(http, url: str, body: dict, headers: dict) -> Result:
    """One streaming completion: when its text arrives, and how many tokens it was."""
    import httpx

    start = time.perf_counter()
    last, result, chunks = None, Result(ok=False), 0
    try:
        async with http.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    result.tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices") or []:
                    if choice.get("text"):
                        now = time.perf_counter()
                        if last is None:
                            result.ttft = now - start
                        else:
                            result.gaps.append(now - last)
                        last, chunks = now, chunks + 1
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.tokens = result.tokens or chunks  # a server that sends no usage: one token per chunk
    result.ok = True
    return result


async def run_load(base: str, model: str, prompts: list[str], clients: int, max_tokens: int,
                   api_key: str | None = None) -> tuple[list[Result], float]:
    """Each of `clients` clients sends the next prompt as soon as its previous answer ended. Returns
    the results in prompt order and the wall time from the first request to the last answer."""
    import httpx

    url = f"{base}/completions"
    headers = auth_headers(api_key)
    pending = list(enumerate(prompts))
    results: list[Result | None] = [None] * len(prompts)

    async def client(http) -> None:
        while pending:
            i, prompt = pending.pop(0)
            body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                    "stream": True, "stream_options": {"include_usage": True}}
            results[i] = await _one(http, url, body, headers)

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return results, wall


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize_load(results: list[Result], wall: float, clients: int, shared_prefix: int) -> dict:
    done = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in done)
    ttfts = [r.ttft for r in done if r.ttft is not None]
    gaps = [g for r in done for g in r.gaps]
    row = {
        "clients": clients, "requests": len(results), "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if not r.ok})[:3],
        "generated_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "ttft_ms": {f"p{q}": _ms(percentile(ttfts, q)) for q in (50, 95, 99)},
        "itl_ms": {f"p{q}": _ms(percentile(gaps, q)) for q in (50, 95, 99)},
    }
    if shared_prefix and len(ttfts) > 1 and results[0].ok:
        row["first_ttft_ms"] = _ms(results[0].ttft)
        row["later_ttft_p50_ms"] = _ms(percentile([r.ttft for r in results[1:] if r.ok and r.ttft], 50))
    return row


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# -- prompts -----------------------------------------------------------------------------------------------


def make_prompts(tokenizer, count: int, length: int, shared: int, label: str = "") -> list[str]:
    """`count` prompts of about `length` tokens of the bench text: the first `shared` tokens the same
    in all, the rest different in each (a different start in the text, after a request label, so no
    two prompts, of this call or of another label, share more than the `shared` tokens)."""
    from mlxmodels.profiling.runner import prompt_tokens

    text_ids = prompt_tokens(tokenizer, 0, 4 * length + 64 * count)
    prefix = tokenizer.decode(text_ids[:shared]) if shared else ""
    own = max(length - shared, 1)
    return [f"{prefix}[{label}{i}] " + tokenizer.decode(text_ids[shared + 37 * i: shared + 37 * i + own])
            for i in range(count)]


# -- servers -------------------------------------------------------------------------------------------


class _Process:
    """A server subprocess, its stderr drained in the background (a full pipe would stall it)."""

    def __init__(self, command: list[str], ready_marker: str | None):
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True)
        self.log: list[str] = []
        self.address = None
        self._ready = threading.Event()

        def read() -> None:
            for line in self.process.stderr:
                self.log.append(line)
                if ready_marker and ready_marker in line and self.address is None:
                    self.address = line.split(" on ")[1].split()[0]
                    self._ready.set()

        threading.Thread(target=read, daemon=True).start()
        if ready_marker is None:
            self._ready.set()

    def wait_healthy(self, root: str) -> None:
        import httpx

        from mlxmodels.errors import OrchardError

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrchardError(f"the server exited ({self.process.returncode}):\n" + "".join(self.log[-20:]))
            try:
                if httpx.get(f"{root}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise OrchardError("the server did not become healthy:\n" + "".join(self.log[-20:]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_orchard(model_dir: Path, clients: int, cpu_weights: str,
                  kv_bits: int | None = None) -> tuple[_Process, str, str]:
    marker = "orchard serve:"
    kv = [] if kv_bits is None else ["--kv-bits", str(kv_bits)]
    server = _Process([sys.executable, "-m", "app.main", "serve", "--model", str(model_dir), "--port", "0",
                       "--max-concurrency", str(clients), "--cpu-weights", cpu_weights, *kv, "--quiet"], marker)
    if not server._ready.wait(START_TIMEOUT):
        server.stop()
        from mlxmodels.errors import OrchardError

        raise OrchardError("orchard serve did not start:\n" + "".join(server.log[-20:]))
    base = server.address
    server.wait_healthy(base.removesuffix("/v1"))
    return server, base, _served_name(base, None)


def start_mlx_lm(model_dir: Path) -> tuple[_Process, str, str]:
    port = _free_port()
    server = _Process([sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir), "--port", str(port),
                       "--log-level", "WARNING"], None)
    root = f"http://127.0.0.1:{port}"
    server.wait_healthy(root)
    return server, f"{root}/v1", str(model_dir)


def _served_name(base: str, api_key: str | None) -> str:
    return served_models(base, api_key, timeout=10)[0]["id"]


# -- the command -----------------------------------------------------------------------------------------


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def handle(args: argparse.Namespace) -> int:
    from mlxmodels.errors import OrchardError
    from mlxmodels.profiling.stats import parse_counts

    levels = parse_counts(args.clients, "-c/--clients", 1)
    for flag, value, low in (("-n/--requests", args.requests, 1), ("-p/--prompt-tokens", args.prompt_tokens, 1),
                             ("-g/--max-tokens", args.max_tokens, 1), ("--shared-prefix", args.shared_prefix, 0)):
        if value < low:
            raise OrchardError(f"{flag} must be at least {low}, got {value}")
    if args.shared_prefix >= args.prompt_tokens:
        raise OrchardError(f"--shared-prefix ({args.shared_prefix}) must be less than --prompt-tokens "
                           f"({args.prompt_tokens})")
    if args.url and args.compare:
        raise OrchardError("--compare starts the servers itself: it does not go with --url")
    if args.url and args.kv_bits is not None:
        raise OrchardError("--kv-bits is for the server bench serve starts: start yours with it instead of --url")
    url_base = api_base(args.url, "--url") if args.url else None  # a malformed URL fails before any loading

    from mlxmodels.resolve import resolve
    from mlxmodels.tokenizer import load_tokenizer

    if args.url:
        model_dir = resolve(args.model) if args.model else None
    else:
        model_dir = resolve(args.model, progress=_status)
        if model_dir.is_file():
            raise OrchardError("bench serve needs a model directory (mlx_lm.server cannot load a .gguf); "
                               "convert it first with `orchard convert`")
    if model_dir is None:
        raise OrchardError("--url needs --model too, for the tokenizer that sizes the prompts")
    tokenizer = load_tokenizer(model_dir)
    warm = make_prompts(tokenizer, 1, 16, 0, "warm-up ")[0]

    engines = ["orchard"] + (["mlx-lm"] if args.compare else [])
    doc = {"model": str(args.model or model_dir.name), "requests": args.requests,
           "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
           "shared_prefix": args.shared_prefix, "kv_bits": args.kv_bits, "engines": {}}
    for engine in engines:
        server = None
        if args.url:
            base, name = url_base, _served_name(url_base, args.api_key)
        elif engine == "orchard":
            _status(f"starting orchard serve on {model_dir.name} …")
            server, base, name = start_orchard(model_dir, max(levels), args.cpu_weights, args.kv_bits)
        else:
            _status(f"starting mlx_lm.server on {model_dir.name} …")
            server, base, name = start_mlx_lm(model_dir)
        try:
            asyncio.run(run_load(base, name, [warm], 1, 4, args.api_key))
            rows = []
            for clients in levels:
                _status(f"{engine}: {clients} client(s), {args.requests} requests …")
                # Fresh prompts per row: a row must not find the previous row's prompts cached.
                prompts = make_prompts(tokenizer, args.requests, args.prompt_tokens, args.shared_prefix,
                                       f"{clients}-")
                results, wall = asyncio.run(run_load(base, name, prompts, clients, args.max_tokens, args.api_key))
                rows.append(summarize_load(results, wall, clients, args.shared_prefix))
            doc["engines"][engine] = rows
        finally:
            if server is not None:
                server.stop()
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(markdown(doc))
    return 0


def markdown(doc: dict) -> str:
    def f(x, digits=1):
        return "-" if x is None else f"{x:.{digits}f}"

    shared = f" ({doc['shared_prefix']} shared)" if doc["shared_prefix"] else ""
    kv = f", orchard's KV cache --kv-bits {doc['kv_bits']}" if doc.get("kv_bits") else ""
    lines = [f"model {doc['model']}: {doc['requests']} requests per row, prompt {doc['prompt_tokens']} tokens"
             f"{shared}, answer up to {doc['max_tokens']} tokens, greedy, streaming{kv}", "",
             "| engine | clients | tok/s | vs 1 client | TTFT p50/p95/p99 ms | ITL p50/p95/p99 ms | failed |",
             "|---|---|---|---|---|---|---|"]
    for engine, rows in doc["engines"].items():
        single = next((r["tokens_per_s"] for r in rows if r["clients"] == 1), None)
        for r in rows:
            scale = f"{r['tokens_per_s'] / single:.2f}x" if single else "-"
            t, i = r["ttft_ms"], r["itl_ms"]
            lines.append(f"| {engine} | {r['clients']} | {f(r['tokens_per_s'])} | {scale} | "
                         f"{f(t['p50'], 0)} / {f(t['p95'], 0)} / {f(t['p99'], 0)} | "
                         f"{f(i['p50'])} / {f(i['p95'])} / {f(i['p99'])} | {r['failed']} |")
    if "mlx-lm" in doc["engines"]:
        lines.append("")
        for ours, theirs in zip(doc["engines"]["orchard"], doc["engines"]["mlx-lm"]):
            if theirs["tokens_per_s"]:
                lines.append(f"{ours['clients']} client(s): orchard {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x "
                             "mlx_lm.server's aggregate tok/s")
    for engine, rows in doc["engines"].items():
        for r in rows:
            if r.get("first_ttft_ms") and r.get("later_ttft_p50_ms"):
                lines.append(f"{engine}, {r['clients']} client(s): first request TTFT {r['first_ttft_ms']:.0f} ms, "
                             f"later ones (prefix cached) p50 {r['later_ttft_p50_ms']:.0f} ms: "
                             f"{r['first_ttft_ms'] / r['later_ttft_p50_ms']:.1f}x faster")
    for engine, rows in doc["engines"].items():
        for r in rows:
            for error in r["errors"]:
                lines.append(f"{engine}, {r['clients']} client(s): failed request: {error}")
    return "\n".join(lines) + "\n"
