"""Running a subcommand as one rank of several (`--ranks N`, or started by `mlx.launch`).

Every rank runs the same command with the same arguments: they load their parts of the model, run
the same generation loop on the same (full) logits and so agree on every token. Rank 0 owns the
terminal and the server; the other ranks' output is silenced (`--debug` keeps it).
"""

from __future__ import annotations

import argparse
import os
import sys

GROUP = None  # this process's mlxmodels.distributed.Group, once joined (None: running alone)


def add_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("distributed (a model split over several processes or machines)")
    g.add_argument("--ranks", type=int, default=None, metavar="N",
                   help="start N local ranks and split the model over them (on several machines: mlx.launch "
                        "with a host file, see docs/distributed.md)")
    g.add_argument("--parallel", choices=("pipeline", "tensor"), default=None,
                   help="with --ranks or under mlx.launch: how the model is split, contiguous layer ranges per "
                        "rank (pipeline, the default) or every layer's heads/columns/experts (tensor)")


def parallel(args: argparse.Namespace) -> str:
    return args.parallel or "pipeline"


def maybe_launch(args: argparse.Namespace, argv: list[str]) -> int | None:
    """With --ranks N in a process that is not already a rank: run N ranks of this command and
    return rank 0's exit status. None: carry on in this process."""
    from mlxmodels.distributed import launched
    from mlxmodels.distributed.launch import launch_local
    from mlxmodels.errors import OrchardError

    ranks = getattr(args, "ranks", None)
    if launched():
        return None
    if getattr(args, "parallel", None) is not None and (ranks or 1) < 2:
        raise OrchardError("--parallel needs --ranks N (N >= 2) or a start by mlx.launch")
    if ranks is not None and getattr(args, "bench_action", None):
        raise OrchardError(f"--ranks applies to `orchard bench` runs, not to `orchard bench {args.bench_action}`")
    if ranks is None:
        return None
    if ranks < 1:
        raise OrchardError(f"--ranks must be at least 1, got {ranks}")
    if ranks == 1:
        return None
    return launch_local(ranks, [sys.executable, "-m", "app.main", *argv], debug=args.debug)


def join(args: argparse.Namespace) -> None:
    """Join the distributed job this process was started in, if any; silence the followers."""
    global GROUP
    from mlxmodels import distributed
    from mlxmodels.errors import OrchardError

    if not distributed.launched():
        return
    if not hasattr(args, "parallel"):
        raise OrchardError(f"orchard {args.command} does not run as a rank: launch `orchard serve` and chat with "
                           "it (`orchard chat --server URL`), or use `orchard chat --ranks N` on one machine")
    GROUP = distributed.init()
    if GROUP is None or args.debug:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    if GROUP.is_leader:
        _filter_backend_messages()
    else:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)


def _filter_backend_messages() -> None:
    """MLX's ring backend writes a line to stderr (fd 2) per failed socket operation when a peer
    goes away; rank 0 reports that in one line of its own. Python's own writes keep the terminal
    (sys.stderr moves to a copy of fd 2); what native code writes to fd 2 passes through a filter."""
    import threading

    terminal = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    sys.stderr = open(terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace",
                      closefd=False)

    def copy():
        with open(read, "rb", buffering=0) as pipe:
            for line in pipe:
                if not line.startswith(b"[ring]"):
                    os.write(terminal, line)

    threading.Thread(target=copy, daemon=True, name="orchard-stderr-filter").start()


def is_follower() -> bool:
    return GROUP is not None and not GROUP.is_leader


def check_speculative(args: argparse.Namespace) -> None:
    """Speculative decoding sizes its guesses by measured time, which differs between ranks: they
    would stop running the same passes."""
    from mlxmodels.errors import OrchardError

    if GROUP is not None and (args.draft is not None or args.prompt_lookup is not None or args.mtp):
        raise OrchardError("speculative decoding (--draft, --prompt-lookup, --mtp) does not run over several ranks")


def load(args: argparse.Namespace, progress=None):
    """(model, tokenizer): this rank's part when distributed, else the whole model."""
    from mlxmodels import distributed, load as load_whole

    if GROUP is None:
        return load_whole(args.model, progress=progress, cpu_weights=args.cpu_weights)
    return distributed.load(args.model, GROUP, parallel(args), progress=progress, cpu_weights=args.cpu_weights)


def load_model(args: argparse.Namespace, path):
    from mlxmodels import distributed
    from mlxmodels.api import load_model as load_whole

    if GROUP is None:
        return load_whole(path, cpu_weights=args.cpu_weights)
    return distributed.load_model(path, GROUP, parallel(args), cpu_weights=args.cpu_weights)


def start_server(ranks: int, parallel: str, model: str | None, cpu_weights: str):
    """`orchard chat --ranks N`: an `orchard serve --ranks N` on a free local port for the chat to be a
    client of (rank 0 serves; the chat UI stays in this process). Returns (process, base URL)."""
    import re
    import subprocess

    from mlxmodels.errors import OrchardError

    if ranks < 2:
        raise OrchardError(f"--ranks must be at least 2 for a distributed chat, got {ranks}")
    command = [sys.executable, "-m", "app.main", "serve", "--port", "0", "-q", "--ranks", str(ranks),
               "--parallel", parallel, "--cpu-weights", cpu_weights, *(["--model", model] if model else [])]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    last = ""
    for line in server.stderr:
        match = re.search(r"on (http://\S+/v1) ", line)
        if match:
            return server, match.group(1).removesuffix("/v1")
        last = line.strip() or last
    server.wait()
    raise OrchardError(f"the {ranks}-rank server did not start: {last.removeprefix('orchard: error: ')}")
