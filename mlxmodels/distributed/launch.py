"""`--ranks N`: start N local ranks of the same command, as `mlx.launch -n N --backend ring` would.

Each rank gets the environment mlx.launch gives it (`MLX_RANK`, and `MLX_HOSTFILE` naming one local
port per rank for the ring backend). Rank 0 keeps this terminal (stdin, stdout, stderr); the others
run silently. The launcher returns rank 0's exit status. When a rank dies, the launcher notes which
and how in `ORCHARD_RANK_STATUS` (rank 0 puts it in its one-line error); if rank 0 has not ended
`GRACE_S` seconds later (a hung peer), the launcher stops every rank and prints the line itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STATUS_ENV = "ORCHARD_RANK_STATUS"
GRACE_S = 3.0  # how long rank 0 has to report a dead peer itself before it is stopped
POLL_S = 0.1


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def describe_exit(rank: int, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"rank {rank} was killed ({name})"
    return f"rank {rank} exited with status {code}"


def launch_local(ranks: int, command: list[str], debug: bool = False) -> int:
    """Run `command` (argv, the Python interpreter included) as `ranks` local ranks; rank 0's status."""
    with tempfile.TemporaryDirectory(prefix="orchard-ranks-") as tmp:
        hostfile = Path(tmp) / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in _free_ports(ranks)]))
        status = Path(tmp) / "status"
        procs = []
        for rank in range(ranks):
            env = {**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile), STATUS_ENV: str(status)}
            quiet = rank > 0 and not debug
            procs.append(subprocess.Popen(
                command, env=env,
                stdin=subprocess.DEVNULL if rank else None,
                stdout=subprocess.DEVNULL if quiet else None,
                stderr=subprocess.DEVNULL if quiet else None,
            ))
        # SIGTERM (a service manager stopping the job) goes to rank 0, which ends as it would alone
        # (`orchard serve` drains its requests); the watch loop then stops the other ranks.
        previous = signal.signal(signal.SIGTERM, lambda *_: procs[0].send_signal(signal.SIGTERM))
        try:
            return _watch(procs, status)
        except KeyboardInterrupt:
            _stop(procs)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)


def _watch(procs: list, status: Path) -> int:
    leader = procs[0]
    failed_at = None
    while True:
        code = leader.poll()
        if code is not None:
            _stop(procs[1:], wait=5.0)
            return code
        if failed_at is None:
            for rank, p in enumerate(procs[1:], start=1):
                c = p.poll()
                if c is not None and c != 0:
                    status.write_text(describe_exit(rank, c))
                    failed_at = time.monotonic()
                    break
        elif time.monotonic() - failed_at > GRACE_S:
            _stop(procs)
            print(f"orchard: error: {status.read_text()}; the job was stopped", file=sys.stderr, flush=True)
            return 1
        time.sleep(POLL_S)


def _stop(procs: list, wait: float = 2.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + wait
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def peer_failure(error: BaseException) -> str | None:
    """The one-line account of a lost rank, if `error` is the backend's report of one (else None)."""
    text = str(error)
    if not (text.startswith("[ring]") or "[jaccl]" in text or "[mpi]" in text.lower()):
        return None
    path = os.environ.get(STATUS_ENV)
    deadline = time.monotonic() + 2.0  # the launcher notices a dead rank within a poll or two
    while path and time.monotonic() < deadline:
        if Path(path).is_file() and Path(path).read_text():
            return f"{Path(path).read_text()} ({text.splitlines()[0]})"
        time.sleep(POLL_S)
    return f"another rank stopped responding ({text.splitlines()[0]})"
