"""Collectives that give up early when a peer is known to have failed.

A gloo collective whose peer died blocks until the group timeout on the
ranks that were not directly connected to the dead one. `GuardedCommunicator`
waits in short slices and, between slices, asks the store whether some
survivor already started recovery for this membership epoch; if so it
abandons the collective at once, so every survivor joins the recovery within
a fraction of a second instead of a full timeout.
"""

from __future__ import annotations

import datetime
import time
from typing import Callable

import torch
import torch.distributed as dist


class PeerFailure(RuntimeError):
    """A collective was abandoned because a peer failed (or it exceeded the timeout)."""


class GuardedWork:
    def __init__(self, work, failed: Callable[[], bool], limit: float, after=None,
                 slice_s: float = 0.2):
        self.work, self.failed, self.limit, self.after = work, failed, limit, after
        self.slice = datetime.timedelta(seconds=slice_s)

    def wait(self) -> bool:
        deadline = time.monotonic() + self.limit
        while True:
            try:
                self.work.wait(self.slice)
                break
            except RuntimeError as exc:
                if "timed out" not in str(exc).lower():
                    raise
            if self.failed():
                raise PeerFailure("peer failure: another worker started recovery")
            if time.monotonic() > deadline:
                raise PeerFailure(f"collective timed out after {self.limit:.0f} s")
        if self.after is not None:
            self.after()
        return True


class _Done:
    def wait(self) -> bool:
        return True


class GuardedCommunicator:
    """The Communicator interface over the default group, with failure-aware waits."""

    def __init__(self, failed: Callable[[], bool], limit: float):
        self.failed, self.limit = failed, limit

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    def _guard(self, work, async_op: bool, after=None):
        g = GuardedWork(work, self.failed, self.limit, after)
        if async_op:
            return g
        g.wait()
        return _Done()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum", async_op: bool = False):
        if op not in ("sum", "avg"):
            raise ValueError(f"all_reduce op must be 'sum' or 'avg', got {op!r}")
        n = self.world_size
        if n == 1:
            return _Done()
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)
        return self._guard(work, async_op, (lambda: tensor.div_(n)) if op == "avg" else None)

    def broadcast(self, tensor: torch.Tensor, src: int = 0, async_op: bool = False):
        if self.world_size == 1:
            return _Done()
        return self._guard(dist.broadcast(tensor, src=src, async_op=True), async_op)

    def exchange(self, send: torch.Tensor, recv: torch.Tensor, peer: int):
        """Asynchronous send/receive with one peer (pair averaging)."""
        works = [dist.isend(send, peer), dist.irecv(recv, peer)]
        return [GuardedWork(w, self.failed, self.limit) for w in works]
