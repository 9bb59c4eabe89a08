"""The process group: which rank this process is, of how many, joined through `mx.distributed`.

`mlx.launch` (and `orchard ... --ranks N`, which sets up the same environment) tells each process its
rank (`MLX_RANK`) and where its peers listen (`MLX_HOSTFILE` for the ring backend, `MLX_JACCL_*` for
JACCL, MPI's own variables); `mx.distributed.init` reads them. Without any, the group has one rank
and nothing here changes how a model runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxmodels.errors import OrchardError

PARALLEL_MODES = ("pipeline", "tensor")
_ENVIRONMENT = ("MLX_RANK", "MLX_HOSTFILE", "MLX_JACCL_COORDINATOR", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def launched() -> bool:
    """Whether this process was started as one rank of a distributed job."""
    return any(name in os.environ for name in _ENVIRONMENT)


@dataclass
class Group:
    group: mx.distributed.Group

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()

    @property
    def is_leader(self) -> bool:
        """Rank 0 owns the terminal, the chat and the server; the others follow."""
        return self.rank == 0

    def broadcast_int(self, value: int) -> int:
        """Rank 0's `value` on every rank (a sum where only rank 0 contributes)."""
        mine = mx.array([value if self.is_leader else 0], dtype=mx.int64)
        return int(mx.distributed.all_sum(mine, group=self.group, stream=mx.cpu).item())

    def broadcast_bytes(self, payload: bytes = b"") -> bytes:
        """Rank 0's `payload` on every rank (the others pass nothing): its length, then its bytes,
        each as a sum to which only rank 0 contributes."""
        size = mx.distributed.all_sum(mx.array([len(payload) if self.is_leader else 0], dtype=mx.int64),
                                      group=self.group).item()
        if not size:
            return b""
        data = (mx.array(np.frombuffer(payload, dtype=np.uint8)) if self.is_leader
                else mx.zeros((size,), dtype=mx.uint8))
        return bytes(memoryview(mx.distributed.all_sum(data, group=self.group)))

    def gather_floats(self, value: float) -> list[float]:
        """Every rank's `value`, in rank order."""
        out = mx.distributed.all_gather(mx.array([value], dtype=mx.float32), group=self.group, stream=mx.cpu)
        return [float(v) for v in out.tolist()]


JOIN_TIMEOUT_ENV = "ORCHARD_JOIN_TIMEOUT"
JOIN_TIMEOUT_S = 60.0


def join_timeout() -> float:
    """Seconds to wait for every rank to answer when joining (ORCHARD_JOIN_TIMEOUT, default 60)."""
    raw = os.environ.get(JOIN_TIMEOUT_ENV, "").strip()
    if not raw:
        return JOIN_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise OrchardError(f"{JOIN_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


# The watchdog process: waits on its stdin for `timeout` seconds; the parent closing the pipe (it has
# joined) ends it quietly; otherwise it prints the line and stops the parent (TERM, then KILL).
_WATCHDOG = """
import os, select, signal, sys, time
parent, timeout, line = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if not ready:
    sys.stderr.write(line + "\\n"); sys.stderr.flush()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(parent, sig)
        except ProcessLookupError:
            break
        time.sleep(2)
"""


def _join(timeout: float) -> mx.distributed.Group:
    """mx.distributed.init, or a one-line error and the process stopped when the other ranks do not
    answer in time. The ring backend keeps trying to reach a host that is down or unreachable inside
    C++ that holds Python's lock, so no thread of this process could step in: a small watchdog process
    does."""
    rank = os.environ.get("MLX_RANK", "?")
    line = (f"orchard: error: rank {rank}: the other ranks did not answer within {timeout:g} s "
            f"(is every host up and reachable? {JOIN_TIMEOUT_ENV} sets the wait)")
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout), line],
                                stdin=subprocess.PIPE)
    try:
        return mx.distributed.init(strict=True)
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def init() -> Group | None:
    """This process's group when it was launched as a rank of several; None when it runs alone."""
    if not launched():
        return None
    try:
        group = _join(join_timeout())
    except RuntimeError as e:
        raise OrchardError(f"cannot join the distributed job: {e}") from None
    if group.size() < 2:
        return None
    g = Group(group)
    # Sampling draws from MLX's global generator: every rank must draw the same numbers, or the
    # ranks would pick different tokens. Rank 0 picks the seed.
    mx.random.seed(g.broadcast_int(int.from_bytes(os.urandom(4), "little")))
    return g


def check_mode(parallel: str) -> str:
    if parallel not in PARALLEL_MODES:
        raise OrchardError(f"--parallel must be one of {', '.join(PARALLEL_MODES)}, got '{parallel}'")
    return parallel


def available_memory() -> int:
    """Bytes this host can give a model's weights: free memory on Linux, the GPU's recommended
    working set (else physical memory) on macOS."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        info = mx.device_info()
        return int(info.get("max_recommended_working_set_size") or info.get("memory_size") or 0)
    except Exception:  # noqa: BLE001 (older MLX or no device info: fall back to an even split)
        return 0
