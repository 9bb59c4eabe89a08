"""A loaded model made distributed: its forward pass gives every rank the full logits.

The model keeps its class's attributes and methods (info, layers, sanitize...): `attach` swaps in a
subclass whose `__call__` adds the communication at the ends of the forward pass and whose
`make_cache` fits the split, so generation, chat and the scheduler run it unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

# Pipeline prefill is cut into this many micro-batches per rank (when long enough), so that rank r
# runs micro-batch i while rank r+1 runs micro-batch i-1.
MICRO_BATCHES_PER_RANK = 2
MIN_MICRO_BATCH = 16


@dataclass
class Traffic:
    """What one decode step sends, counted when its graph is built: for `orchard bench`."""

    ops: list = field(default_factory=list)  # (kind, shape, dtype) of the last forward pass
    sends: list = field(default_factory=list)  # this pass's sends, not yet queued

    def add(self, kind: str, x: mx.array) -> None:
        self.ops.append((kind, tuple(x.shape), x.dtype))

    @property
    def nbytes(self) -> int:
        return sum(math.prod(shape) * dtype.size for _, shape, dtype in self.ops)


class Distributed:
    """The run-time side of a split: group, plan, and the forward pass's ends."""

    def __init__(self, group, plan, parallel: str, traffic: Traffic):
        self.group, self.plan, self.parallel = group, plan, parallel
        self.traffic = traffic

    def forward(self, call, inputs, cache=None, **kwargs):
        self.traffic.ops = []
        if self.parallel == "pipeline":
            return self._pipeline(call, inputs, cache, **kwargs)
        logits = call(inputs, cache=cache, **kwargs)
        vocab = self.plan.vocab
        if vocab is not None and logits.shape[-1] == vocab[1] - vocab[0]:
            # Each rank computed its slice of the vocabulary: gather along the first axis, then back.
            self.traffic.add("all_gather", logits)
            return mx.moveaxis(mx.distributed.all_gather(mx.moveaxis(logits, -1, 0), group=self.group.group), 0, -1)
        # A whole head on every rank: over 3+ ranks the sums before it may differ in their last bits
        # from rank to rank (each adds in its own order), so every rank takes rank 0's logits.
        self.traffic.add("all_sum", logits)
        mine = logits if self.group.is_leader else mx.depends(mx.zeros_like(logits), [logits])  # its pass still runs
        return mx.distributed.all_sum(mine, group=self.group.group)

    def _pipeline(self, call, inputs, cache, **kwargs):
        parts = MICRO_BATCHES_PER_RANK * self.group.size
        if cache is None or inputs.shape[1] < parts * MIN_MICRO_BATCH:
            logits = call(inputs, cache=cache, **kwargs)
        else:
            # Micro-batches queued one after another (async_eval keeps their order on every rank,
            # so sends and receives pair up); no collective between them, so the ranks overlap.
            outputs = []
            for chunk in _split(inputs, parts):
                outputs.append(call(chunk, cache=cache, **kwargs))
                mx.async_eval(outputs[-1])  # on ranks before the last: the zeros wait on the send
            self.traffic.sends = []
            logits = mx.concatenate(outputs, axis=1)
        self._queue_sends()
        # Only the last rank's logits are real (the others' are zeros): the sum hands them to all.
        self.traffic.add("all_sum", logits)
        return mx.distributed.all_sum(logits, group=self.group.group)

    def _queue_sends(self) -> None:
        """Start this rank's sends now: a caller that evaluates only the cache (prefill does) would
        otherwise never run them, and the next rank would wait for ever."""
        if self.traffic.sends:
            mx.async_eval(self.traffic.sends)
            self.traffic.sends = []


def _split(inputs: mx.array, parts: int) -> list:
    L = inputs.shape[1]
    bounds = [round(i * L / parts) for i in range(parts + 1)]
    return [inputs[:, a:b] for a, b in zip(bounds, bounds[1:])]


def attach(model: nn.Module, dist: Distributed) -> nn.Module:
    cls = model.__class__

    class DistributedModel(cls):
        def __call__(self, inputs, cache=None, **kwargs):
            return dist.forward(lambda x, **kw: cls.__call__(self, x, **kw), inputs, cache, **kwargs)

        def make_cache(self):
            if dist.parallel == "pipeline":
                return dist.plan.make_cache()
            return cls.make_cache(self)

    DistributedModel.__name__ = DistributedModel.__qualname__ = cls.__name__
    model.__class__ = DistributedModel
    model.distributed = dist
    return model


def measure_traffic(dist: Distributed, repeats: int = 20) -> float:
    """Seconds the communication of the last forward pass takes on this group, replayed alone with
    the same shapes (every rank must call this together, after the same forward pass)."""
    group, rank, size = dist.group.group, dist.group.rank, dist.group.size
    ops = [(kind, mx.zeros(shape, dtype=dtype)) for kind, shape, dtype in dist.traffic.ops]
    hop = next((a for kind, a in ops if kind in ("send", "recv")), None)
    mx.eval([a for _, a in ops])

    def once():
        outs = []
        if hop is not None:  # pipeline: the hidden state travels rank 0 -> 1 -> ... in turn
            for src in range(size - 1):
                if rank == src:
                    mx.eval(mx.distributed.send(hop, src + 1, group=group))
                elif rank == src + 1:
                    mx.eval(mx.distributed.recv_like(hop, src, group=group))
        for kind, a in ops:
            if kind == "all_gather":
                outs.append(mx.distributed.all_gather(a, group=group))
            elif kind == "all_sum":
                outs.append(mx.distributed.all_sum(a, group=group))
        mx.eval(outs)

    once()
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - start) / repeats
