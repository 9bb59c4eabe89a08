"""`orchard convert`: any model Orchard reads (HF or MLX directory, repo id, .gguf) -> an MLX model
directory, 4-bit by default, with a summary of what the quantization cost.

Progress goes to stderr, the summary to stdout. The output appears only when complete: it is
written beside OUT under a temporary name and renamed at the end.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from mlxmodels.convert import BITS, DTYPES, GROUP_SIZES, RECIPES


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a model to a (quantized) MLX directory", description=__doc__)
    p.add_argument("src", metavar="SRC", help="model directory, .gguf file, catalog name or Hugging Face repo id")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="the MLX model directory to create")
    p.add_argument("--bits", type=int, choices=BITS, default=4, help="bits per quantized weight (default 4)")
    p.add_argument("--group-size", type=int, choices=GROUP_SIZES, default=64,
                   help="weights sharing one scale and bias (default 64)")
    p.add_argument("--recipe", choices=RECIPES, default=None,
                   help="mixed: embeddings, LM head and the first/last blocks' value/down projections get 2 more bits")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                   help="float dtype of unquantized tensors, scales and biases (default: bfloat16 stays, else float16)")
    p.add_argument("--dequantize", action="store_true", help="write float weights (undo a quantized source)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-eval", action="store_true",
                   help="skip measuring perplexity/KL of source and result (saves loading both models)")
    p.add_argument("--run", metavar="PROMPT", default=None,
                   help="then load OUT and answer PROMPT greedily (the one-shot convert-and-run)")
    p.add_argument("--max-tokens", type=int, default=128, help="with --run: most tokens to generate (default 128)")
    p.set_defaults(handler=handle)


class _ProgressBar:
    """A bar over bytes on a terminal; a line per tenth otherwise (logs stay short)."""

    def __init__(self, stream=None):
        stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        self.stream, self.tty, self.last_tenth, self.start = stream, stream.isatty(), -1, time.perf_counter()

    def __call__(self, done: int, total: int, name: str) -> None:
        frac = done / total if total else 1.0
        if self.tty:
            filled = int(30 * frac)
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {frac:6.1%} {done / 1e6:8.1f}/{total / 1e6:.1f} MB "
                  f"{name[-40:]:<40}", end="", file=self.stream, flush=True)
            if done >= total:
                print(file=self.stream)
        elif int(frac * 10) > self.last_tenth:
            self.last_tenth = int(frac * 10)
            print(f"converting: {frac:.0%} ({done / 1e6:.1f}/{total / 1e6:.1f} MB, "
                  f"{time.perf_counter() - self.start:.1f} s)", file=self.stream, flush=True)


def _terminate(signum, frame):
    # SIGTERM like Ctrl-C: unwinds through the conversion's cleanup, so no temporary directory stays.
    raise KeyboardInterrupt


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlxmodels.convert import ConvertOptions, convert
    from mlxmodels.errors import OrchardError
    from mlxmodels.resolve import resolve

    options = ConvertOptions(bits=args.bits, group_size=args.group_size, recipe=args.recipe, dtype=args.dtype,
                             dequantize=args.dequantize, force=args.force)
    options.check()
    out = Path(args.out).expanduser()
    if out.exists() and not args.force:
        raise OrchardError(f"{out}: already exists (pass --force to replace it)")
    src = resolve(args.src, progress=lambda m: print(m, file=sys.stderr, flush=True))
    if src.resolve() == out.resolve():
        raise OrchardError(f"{out}: the output cannot be the source")
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        print(f"Converting {src} -> {out}", file=sys.stderr, flush=True)
        result = convert(src, out, options, progress=_ProgressBar())
    finally:
        signal.signal(signal.SIGTERM, previous)
    for warning in result.warnings:
        print(f"orchard: warning: {warning}", file=sys.stderr)
    print(format_summary(result))
    if not args.no_eval:
        print(_quality_line(src, result.out))
    sys.stdout.flush()
    if args.run is not None:
        from app.main import build_parser

        run_args = build_parser().parse_args(
            ["run", "--model", str(result.out), "--prompt", args.run, "--temp", "0", "--max-tokens", str(args.max_tokens)]
        )
        return run_args.handler(run_args)
    return 0


def format_summary(r) -> str:
    quantized = f", {r.quantized_parameters / 1e6:.2f} M quantized" if r.quantized_parameters else ""
    return "\n".join([
        f"wrote {r.out} ({r.shards} shard{'s' if r.shards != 1 else ''})",
        f"parameters: {r.parameters / 1e6:.2f} M{quantized}",
        f"bits per weight: {r.bits_per_weight:.3f} (all tensors: embeddings, norms, scales and biases included)",
        f"size: {r.size_before / 1e6:.1f} MB -> {r.size_after / 1e6:.1f} MB",
        f"time: {r.seconds:.1f} s",
        f"peak memory: MLX {r.peak_memory / 1e6:.1f} MB, process RSS {r.peak_rss / 1e6:.1f} MB "
        f"(largest tensor {r.largest_tensor / 1e6:.1f} MB)",
    ])


def _quality_line(src, out) -> str:
    """Perplexity of source and result on assets/calibration.txt, and their mean next-token KL; or
    why they were not measured (e.g. the source would not fit in memory as evaluated)."""
    from mlxmodels.errors import OrchardError
    from mlxmodels.quality import measure

    try:
        q = measure(src, out)
    except OrchardError as e:
        return f"quality: not measured ({e})"
    return (f"quality on {q.tokens} tokens of assets/calibration.txt: perplexity {q.perplexity_source:.3f} (source) "
            f"-> {q.perplexity_converted:.3f} (converted), mean KL {q.mean_kl:.5f} nats/token")
