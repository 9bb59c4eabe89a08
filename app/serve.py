"""`orchard serve`: an OpenAI-compatible HTTP server with continuous batching and a shared prefix cache.

    orchard serve [--model M] [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--max-concurrency 8]

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (streaming or not),
GET /health. One scheduler thread owns the model: requests join and leave the running batch between
decode steps, and prompts that share a prefix with earlier ones reuse its cache. SIGTERM (or Ctrl+C)
stops taking requests, finishes the running ones, then exits.

Speculative decoding: --prompt-lookup N, --draft M or --mtp [--num-draft K] make every request
speculate (the answer is the same, several tokens per model pass when guesses are right); a request
turns it off with "speculative": false, on with true, or sets its most guesses with
{"num_draft": K}. OpenAI's "prediction" (Predicted Outputs) adds its text to what prompt lookup
matches. usage.completion_tokens_details counts the guesses kept and rejected.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import sys
from pathlib import Path

from app import ranks
from app.options import (add_distributed_options, add_kv_bits_option, add_model_option, add_speculative_options,
                         speculative_from_args)

SPECULATE_UP_TO = 1  # measured in docs/performance.md ("Speculation in serve")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str) -> int:
    """'512MB', '2GiB', '1e9'-free plain forms like '1000000' or '1.5G' -> bytes."""
    from mlxmodels.errors import OrchardError

    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower().rstrip("b") if match else None
    if match is None or unit not in _UNITS:
        raise OrchardError(f"'{text}' is not a size (examples: 0, 512MB, 2GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_option(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/ requests (401 without it)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model's id in the API (default: the model directory's or reference's name)")
    p.add_argument("--max-concurrency", type=int, default=8, metavar="N",
                   help="requests generated at once, in one batch (default 8)")
    p.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="requests waiting beyond those; more get 429 with Retry-After (default 4 x --max-concurrency)")
    p.add_argument("--prompt-cache-bytes", default="1GiB", metavar="SIZE",
                   help="memory for caches of earlier prompts, reused by prompts that share a prefix, least "
                        "recently used dropped first (default 1GiB; 0 turns the prefix cache off)")
    p.add_argument("--prefill-step", type=int, default=256, metavar="N",
                   help="prompt tokens prefilled between two decode steps of the running requests (default 256; "
                        "4x that while none is running)")
    p.add_argument("--max-request-bytes", default="2MiB", metavar="SIZE",
                   help="largest request body accepted (413 beyond; default 2MiB)")
    add_kv_bits_option(p, "per request")
    add_speculative_options(p)
    p.add_argument("--speculate-up-to", type=int, default=SPECULATE_UP_TO, metavar="R",
                   help="requests speculate only while at most R run in the batch (default "
                        f"{SPECULATE_UP_TO}: on the CPU backend batched guesses pay only when most requests repeat "
                        "their input; raise it for such traffic)")
    p.add_argument("--quiet", "-q", action="store_true", help="no log line per request")
    add_distributed_options(p)
    p.set_defaults(handler=handle)


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def model_name(reference: str | None, model) -> str:
    if reference is None:
        return model.info.path.name
    path = Path(reference)
    if path.exists():
        return path.stem if path.is_file() else path.resolve().name
    return reference


def handle(args: argparse.Namespace) -> int:
    from mlxmodels.errors import OrchardError

    for flag, value in (("--max-concurrency", args.max_concurrency), ("--prefill-step", args.prefill_step),
                        ("--speculate-up-to", args.speculate_up_to)):
        if value < 1:
            raise OrchardError(f"{flag} must be at least 1, got {value}")
    if args.max_queue is not None and args.max_queue < 0:
        raise OrchardError(f"--max-queue must be at least 0, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise OrchardError(f"--port must be in 0..65535, got {args.port}")
    cache_bytes = parse_bytes(args.prompt_cache_bytes)
    body_bytes = parse_bytes(args.max_request_bytes)
    ranks.check_speculative(args)
    if ranks.is_follower():  # rank 0 serves; this rank runs the same scheduler steps
        model, tokenizer = ranks.load(args)
        _scheduler(args, model, tokenizer, cache_bytes).follow()
        return 0
    sock = _listen(args.host, args.port)  # before loading: a taken port fails in a second, not a minute

    import uvicorn

    from app.serve_api import create_app
    from app.serve_engine import ServeEngine
    from mlxmodels.prompt import generation_defaults

    model, tokenizer = ranks.load(args, progress=_status)
    defaults = generation_defaults(model.info.path) if model.info.path.is_dir() else {}
    speculative = speculative_from_args(args, model, tokenizer, progress=_status)
    scheduler = _scheduler(args, model, tokenizer, cache_bytes)
    name = args.model_name or model_name(args.model, model)
    engine = ServeEngine(model, tokenizer, scheduler, name, defaults, speculative)
    app = create_app(engine, api_key=args.api_key, max_body_bytes=body_bytes,
                     on_shutdown=scheduler.stop)
    scheduler.start()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    _status(f"orchard serve: {name} on http://{shown}:{port}/v1 (max concurrency {scheduler.max_batch}, "
            f"queue {scheduler.max_queue}, prompt cache {cache_bytes / 2**20:.0f} MiB"
            f"{', API key required' if args.api_key else ''})")
    note = model.info.describe_cpu_weights()
    if note:
        _status(f"weights: {note}")
    config = uvicorn.Config(app, log_level="warning" if args.quiet else "info", access_log=not args.quiet,
                            timeout_graceful_shutdown=None, lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn answers SIGTERM by draining, then raises the signal again under the handler found here:
    # the drain is the whole point, so that second delivery ends the process normally (exit 0).
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    _status("orchard serve: stopped")
    return 0


def _scheduler(args: argparse.Namespace, model, tokenizer, cache_bytes: int):
    """The scheduler the flags ask for; over several ranks, one that runs in step on every rank."""
    from mlxmodels import make_cache
    from mlxmodels.prefix_cache import PrefixCache
    from mlxmodels.scheduler import Scheduler

    settings = dict(
        max_batch=args.max_concurrency,
        max_queue=4 * args.max_concurrency if args.max_queue is None else args.max_queue,
        prefill_step=args.prefill_step, prefix_cache=PrefixCache(cache_bytes) if cache_bytes else None,
        make_cache=lambda: make_cache(model, kv_bits=args.kv_bits), speculate_up_to=args.speculate_up_to,
    )
    if ranks.GROUP is None:
        return Scheduler(model, tokenizer, **settings)
    from mlxmodels.distributed.serving import LockstepScheduler

    return LockstepScheduler(model, tokenizer, ranks.GROUP, **settings)


def _listen(host: str, port: int) -> socket.socket:
    from mlxmodels.errors import OrchardError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OrchardError(f"--host {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise OrchardError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
