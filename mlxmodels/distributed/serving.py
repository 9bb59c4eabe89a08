"""`orchard serve` over several ranks: every rank runs the same scheduler, step for step.

Rank 0 owns the HTTP server. Before each scheduler step it sends the other ranks what changed since
the last one (requests submitted, requests cancelled, or the end), so each rank's scheduler takes the
same decisions in the same step: the same rows, caches, prefills and forward passes, which is what
the split model needs (its forward pass is a collective). The scheduler itself is unchanged; this
subclass only stages what the HTTP side hands it until the next step's message.

Speculative decoding is switched off over several ranks (its guess length follows measured time,
which differs between ranks); a constrained request's grammar travels as its source and is compiled
again on each rank.
"""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import replace

from mlxmodels.scheduler import Request, Scheduler, _Sequence


def _portable(request: Request) -> Request:
    """The request as it travels: no speculation, the constraint as its source (not compiled)."""
    constraint = request.constraint
    return replace(request, speculative=None,
                   constraint=None if constraint is None else getattr(constraint, "constraint", constraint))


class LockstepScheduler(Scheduler):
    def __init__(self, model, tokenizer, group, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        self.group = group
        self._staged: list[_Sequence] = []  # submitted since the last step's message
        self._cancels: list[_Sequence] = []
        self._by_id: dict[int, _Sequence] = {}
        self._next_id = 0

    # -- rank 0, any thread ----------------------------------------------------------------------

    def submit(self, request: Request, on_output) -> _Sequence:
        with self._lock:  # re-entrant: the base class takes it too
            sequence = super().submit(request, on_output)
            self._inbox.remove(sequence)
            sequence.request = _portable(sequence.request)
            if request.constraint is not None:
                sequence.request.constraint = request.constraint  # rank 0 keeps its compiled one
            self._staged.append(sequence)
        return sequence

    def cancel(self, sequence: _Sequence) -> None:
        with self._lock:
            self._cancels.append(sequence)
            self._lock.notify()

    @property
    def load(self) -> int:
        return super().load + len(self._staged)

    def _all_sequences(self):
        return [*self._staged, *super()._all_sequences()]

    # -- the scheduler thread --------------------------------------------------------------------

    def step(self) -> None:
        if self.group.is_leader:
            with self._lock:
                fresh, self._staged = self._staged, []
                cancels, self._cancels = self._cancels, []
                self._inbox.extend(fresh)
            for s in fresh:
                s.rank_id, self._next_id = self._next_id, self._next_id + 1
                self._by_id[s.rank_id] = s
            message = {"submit": [(s.rank_id, _portable(s.request)) for s in fresh],
                       "cancel": [s.rank_id for s in cancels if hasattr(s, "rank_id")]}
            for s in cancels:
                s.cancelled = True
            self._exchange(pickle.dumps(message))
        self._checked(super().step)
        self._by_id = {i: s for i, s in self._by_id.items() if not s.finished}

    def _loop(self) -> None:
        try:
            super()._loop()
        finally:
            if self.group.is_leader:
                self._exchange(pickle.dumps({"close": True}))

    def follow(self) -> None:
        """Ranks other than 0: run rank 0's steps until it closes."""
        from mlxmodels.api import release_thread, warm_up

        try:
            self._checked(lambda: warm_up(self.model))  # rank 0's scheduler thread starts with one
            while True:
                message = pickle.loads(self._exchange())
                if message.get("close"):
                    return
                for rank_id, request in message["submit"]:
                    if request.constraint is not None:
                        request.constraint = request.constraint.compile(self.tokenizer)
                    s = _Sequence(request, lambda output: None, self.tokenizer)
                    self._by_id[rank_id] = s
                    self._inbox.append(s)
                for rank_id in message["cancel"]:
                    if rank_id in self._by_id:
                        self._by_id[rank_id].cancelled = True
                self._checked(super().step)
                self._by_id = {i: s for i, s in self._by_id.items() if not s.finished}
        finally:
            release_thread()

    def _exchange(self, payload: bytes = b"") -> bytes:
        return self._checked(lambda: self.group.broadcast_bytes(payload))

    @staticmethod
    def _checked(work):
        """Run `work`; a lost rank ends this process with one line (a server cannot go on without it)."""
        from mlxmodels.distributed.launch import peer_failure

        try:
            return work()
        except RuntimeError as e:
            failure = peer_failure(e)
            if failure is None:
                raise
            print(f"orchard: error: {failure}", file=sys.stderr, flush=True)
            os._exit(1)
