"""`orchard bench`: time to first token, prefill and decode tokens/s, memory and roofline, with
spread; optionally side by side with mlx-lm or llama.cpp. `orchard bench report FILES…` compares runs.

Tests follow llama-bench: `-p 512` is a prefill test (pp512), `-g 128` a decode test (tg128),
`--pg 512,128` both in one run, `-d 4096` runs each at that pre-filled context depth.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app import ranks
from app.options import add_distributed_options, add_model_option, add_speculative_options


def parse_overrides(items: list[str]) -> dict:
    """`--override FIELD=VALUE` pairs; VALUE is read as JSON (numbers, lists, true/false) or kept as text."""
    from mlxmodels.errors import OrchardError

    overrides = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep or not field:
            raise OrchardError(f"--override: '{item}' must be FIELD=VALUE")
        try:
            overrides[field] = json.loads(text)
        except json.JSONDecodeError:
            overrides[field] = text
    return overrides


def register(sub) -> None:
    from mlxmodels.profiling.synthetic import PRESETS

    p = sub.add_parser("bench", help="benchmark a model: TTFT, tokens/s, memory, roofline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_option(p)
    p.add_argument("--synthetic", metavar="PRESET", default=None,
                   help="benchmark random weights with a real model's shapes instead of --model: "
                        + ", ".join(PRESETS))
    p.add_argument("--bits", type=int, default=4, help="--synthetic: quantization bits, 16 = unquantized (default 4)")
    p.add_argument("--group-size", type=int, default=64, help="--synthetic: quantization group size (default 64)")
    p.add_argument("--layers", type=int, default=None, metavar="N",
                   help="--synthetic: keep only the first N layers (real widths), to measure per-layer cost "
                        "and cache growth of models larger than this machine's memory")
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="--synthetic: replace a config field of the preset, VALUE as JSON or a string "
                        "(e.g. num_experts=16 to study the other layers of a huge MoE); repeatable")
    p.add_argument("-p", "--n-prompt", default="512", metavar="N[,N…]",
                   help="prefill test sizes: list and ranges like 128,512 or 128-2048*2 (default 512)")
    p.add_argument("-g", "--n-gen", default="128", metavar="N[,N…]", help="decode test sizes (default 128)")
    p.add_argument("--pg", action="append", default=[], metavar="P,G",
                   help="a combined test: prefill P tokens then decode G (repeatable)")
    p.add_argument("-d", "--depth", default="0", metavar="N[,N…]",
                   help="pre-filled context depths to run every test at (default 0)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="timed repetitions after a warm-up (default 5)")
    p.add_argument("--batch", type=int, default=1, metavar="B",
                   help="decode B copies of the prompt at once; tokens/s count all B sequences (default 1)")
    p.add_argument("--prefill-step", type=int, default=512, help="prefill chunk size for every engine (default 512)")
    p.add_argument("--prompt-file", type=Path, default=None, metavar="FILE",
                   help="prompt text instead of the shipped one, as one user message through the chat template "
                        "(tests may use up to its length)")
    add_speculative_options(p)
    p.add_argument("--compare", default=None, metavar="ENGINE[,ENGINE]",
                   help="also run mlx-lm and/or llama.cpp (e.g. mlx-lm,llama.cpp) on the same tokens, "
                        "interleaved, and report Orchard's ratio to each")
    p.add_argument("--baseline-dtype", choices=("float32", "native"), default="float32",
                   help="--compare mlx-lm on the CPU backend: cast mlx-lm's model to float32 as Orchard does "
                        "(default, the fair comparison) or keep its checkpoint dtype (as installed)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON document")
    fmt.add_argument("--jsonl", action="store_true", help="print the run as one JSON line")
    fmt.add_argument("--csv", action="store_true", help="print CSV, one line per engine and test")
    add_distributed_options(p)
    p.add_argument("--no-store", action="store_true", help="do not append this run to the local results store")
    p.add_argument("--store", type=Path, default=None, metavar="FILE",
                   help="results store file (default: <user data dir>/bench/results.jsonl; ORCHARD_DATA_DIR moves it)")
    p.set_defaults(handler=handle)
    # `orchard bench report …` and `orchard bench serve …`: optional sub-subcommands, so plain
    # `orchard bench -p …` still runs.
    actions = p.add_subparsers(dest="bench_action", metavar="{report,serve}")
    _add_report_parser(actions)
    from app import serve_bench

    serve_bench.register(actions)


def _add_report_parser(actions) -> None:
    from mlxmodels.profiling.report import METRICS

    p = actions.add_parser("report", help="compare benchmark runs: a table and a bar plot",
                           description="Compare benchmark runs across chips, models and engines: a table and a bar plot.")
    p.add_argument("files", nargs="*", type=Path,
                   help="JSONL stores or --json outputs (default: the local results store)")
    p.add_argument("--metric", choices=METRICS, default="decode_tps", help="figure to compare (default decode_tps)")
    p.add_argument("--test", default=None, help="only rows of this test, e.g. tg128")
    p.add_argument("--last", type=int, default=None, metavar="N", help="only the last N runs")
    p.add_argument("--png", type=Path, default=None, metavar="FILE", help="also write the plot as a PNG")
    p.set_defaults(handler=handle_report)


def _status(message: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True)


def _note(message: str) -> None:
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    print(message, file=sys.stderr, flush=True)


def handle(args: argparse.Namespace) -> int:
    from mlxmodels.errors import OrchardError
    from mlxmodels.profiling import benchmark, make_tests, parse_counts
    from mlxmodels.profiling import report as rep
    from mlxmodels.profiling import store

    if args.synthetic and args.model:
        raise OrchardError("--synthetic and --model exclude each other (a synthetic model has random weights)")
    prompts = parse_counts(args.n_prompt, "-p/--n-prompt", 1)
    gens = parse_counts(args.n_gen, "-g/--n-gen", 1)
    depths = parse_counts(args.depth, "-d/--depth", 0)
    pairs = []
    for item in args.pg:
        values = parse_counts(item, "--pg", 1)
        if len(values) != 2:
            raise OrchardError(f"--pg: '{item}' must be two numbers, PROMPT,GEN")
        pairs.append((values[0], values[1]))
    if args.store is not None and args.no_store:
        raise OrchardError("--store and --no-store exclude each other")
    loaded, loader = _distributed_loader(args)
    if ranks.is_follower():
        args.no_store = True  # rank 0 stores and prints the run
    if not args.no_store:
        _check_writable(args.store or store.results_path())

    doc = benchmark(make_tests(prompts, gens, depths, pairs), args.repetitions, model_ref=args.model,
                    synthetic=args.synthetic, bits=args.bits, group_size=args.group_size, compare=args.compare,
                    baseline_dtype=args.baseline_dtype, cpu_weights=args.cpu_weights,
                    prefill_step=args.prefill_step, batch=args.batch, layers=args.layers,
                    overrides=parse_overrides(args.override), progress=_status,
                    speculative=_speculative(args), prompt_file=args.prompt_file, loader=loader)
    if loaded:
        from mlxmodels.distributed.report import rank_report

        doc["distributed"] = rank_report(loaded[0])
    if ranks.is_follower():
        return 0
    _status("")
    if not args.no_store:
        where = store.append(doc, args.store)
        _note(f"orchard: appended to {where}")
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.jsonl:
        print(json.dumps(doc, separators=(",", ":")))
    elif args.csv:
        sys.stdout.write(rep.to_csv(doc))
    else:
        sys.stdout.write(rep.markdown(doc))
        if "distributed" in doc:
            from mlxmodels.distributed.report import format_report

            tg = [r["decode_tps"]["mean"] for r in doc["results"] if r.get("decode_tps")]
            sys.stdout.write(format_report(doc["distributed"], tg[0] if tg else None))
    return 0


def _distributed_loader(args: argparse.Namespace):
    """([model] once loaded, the loader `benchmark` calls) over several ranks; ([], None) alone."""
    from mlxmodels.errors import OrchardError

    if ranks.GROUP is None:
        return [], None
    for flag, given in (("--synthetic", args.synthetic), ("--compare", args.compare),
                        ("--batch", args.batch != 1)):
        if given:
            raise OrchardError(f"{flag} does not run over several ranks")
    ranks.check_speculative(args)
    loaded = []

    def loader(path):
        loaded.append(ranks.load_model(args, path))
        return loaded[0]

    return loaded, loader


def _speculative(args: argparse.Namespace):
    """What `benchmark` calls with the loaded model to get the speculative decoder (None: plain)."""
    from mlxmodels.errors import OrchardError

    if args.draft is None and args.prompt_lookup is None and not args.mtp:
        if args.num_draft is not None:
            raise OrchardError("--num-draft needs --draft, --prompt-lookup or --mtp")
        return None
    if args.draft is not None and args.synthetic:
        raise OrchardError("--draft needs the model's tokenizer to check the draft's; --synthetic models have none")
    from app.options import speculative_from_args

    return lambda model, tokenizer: speculative_from_args(args, model, tokenizer, progress=_status)


def _check_writable(path: Path) -> None:
    """Fail before the (long) run, not after it, when the store cannot be written."""
    import os

    from mlxmodels.errors import OrchardError

    directory = path.parent
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OrchardError(f"cannot write the results store {path}: permission denied "
                           "(set ORCHARD_DATA_DIR, use --store FILE, or pass --no-store)")


def handle_report(args: argparse.Namespace) -> int:
    from mlxmodels.errors import OrchardError
    from mlxmodels.profiling import report as rep
    from mlxmodels.profiling import store

    files = args.files or [store.results_path()]
    records = []
    for f in files:
        if not Path(f).exists():
            raise OrchardError(f"{f}: no such file (run `orchard bench` first, or name result files)")
        records += store.read_records(f)
    if args.last is not None:
        records = records[-args.last :] if args.last > 0 else []
    rows = rep.comparison_rows(records, args.metric)
    if args.test:
        rows = [r for r in rows if r["test"] == args.test]
    if not rows:
        raise OrchardError(f"no results with {args.metric}" + (f" for test '{args.test}'" if args.test else "")
                           + f" in {', '.join(map(str, files))}")
    sys.stdout.write(rep.comparison_table(rows, args.metric) + "\n" + rep.terminal_plot(rows, args.metric))
    if args.png:
        rep.png_chart(rows, args.metric, args.png)
        print(f"orchard: wrote {args.png}", file=sys.stderr)
    return 0
