"""`orchard`: the command-line entry point. One module per subcommand registers its parser.

Errors a user can cause (`OrchardError`) print as one line and exit 1; `--debug` shows the
traceback instead. Anything else is a bug and always shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

import mlxmodels  # noqa: F401  (first: it selects a fast BLAS before anything loads mlx.core)
from app import bench as bench_command
from app import chat as chat_command
from app import convert as convert_command
from app import run as run_command
from app import serve as serve_command

SUBCOMMANDS = [chat_command, run_command, convert_command, bench_command, serve_command]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchard", description="Fast local LLMs on Apple Silicon (MLX): chat, run, convert, bench."
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


class _VersionAction(argparse.Action):
    """`--version`, worked out only when asked for: it loads MLX and the native kernel, and reads
    ORCHARD_KERNELS (a bad value is then a one-line usage error, not a traceback)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version, MLX backend, BLAS and quantized matmul, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            text = _version()
        except ValueError as e:
            parser.error(str(e))
        print(text)
        parser.exit()


def _version() -> str:
    """Orchard's version plus what decides its speed: MLX version, backend, BLAS and quantized matmul."""
    from importlib.metadata import PackageNotFoundError, version

    import mlx.core as mx

    from metal_kernels import backend_name, quantized
    from mlxmodels import blas

    try:
        ours = version("orchard")
    except PackageNotFoundError:
        ours = "unknown"
    return (f"orchard {ours} (mlx {mx.__version__}, {backend_name()} backend, BLAS: {blas.current().describe()}, "
            f"quantized matmul: {quantized.describe()})")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # Plain `orchard` (top-level options only) opens the chat.
        args = parser.parse_args([*(sys.argv[1:] if argv is None else argv), "chat"])
    from metal_kernels import kernel_mode
    from mlxmodels.errors import OrchardError

    from app import ranks

    try:
        _check_environment(kernel_mode)
        # --ranks N: this process only starts the N ranks (each one runs this command again).
        launched = ranks.maybe_launch(args, sys.argv[1:] if argv is None else argv)
        if launched is not None:
            return launched
        ranks.join(args)
        return args.handler(args) or 0
    except OrchardError as e:
        if args.debug:
            raise
        print(f"orchard: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        # A rank of a distributed job died or became unreachable: one line, not a traceback.
        from mlxmodels.distributed.launch import peer_failure

        failure = peer_failure(e)
        if failure is None or args.debug:
            raise
        print(f"orchard: error: {failure}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\norchard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # e.g. `orchard run ... | head`: the reader left; not an error worth a traceback.
        sys.stderr.close()
        return 0


def _check_environment(kernel_mode) -> None:
    """Settings read deep inside the engine, checked up front so a typo is one clear line."""
    from mlxmodels.errors import OrchardError

    from metal_kernels.cpu import thread_setting
    from mlxmodels.layers import cpu_math

    for check in (kernel_mode, cpu_math.mode, thread_setting):  # ORCHARD_KERNELS, ORCHARD_CPU_MATH, ORCHARD_CPU_THREADS
        try:
            check()
        except ValueError as e:
            raise OrchardError(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())
