"""The Communicator interface: how runtimes ask for collectives.

The data-parallel runtime (and later the pipeline and adaptive runtimes) only
call these methods, so a different collective algorithm (Blink-style tree
packing, ring, a tuned mix) plugs in by passing another Communicator. The
default, `TorchCommunicator`, calls torch.distributed's built-in collectives.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist


@runtime_checkable
class Work(Protocol):
    def wait(self) -> object: ...


class _Done:
    """A finished Work (for synchronous implementations)."""

    def wait(self) -> bool:
        return True


DONE = _Done()


@runtime_checkable
class Communicator(Protocol):
    """Collectives over one process group. `op` is "sum" or "avg"."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum", async_op: bool = False) -> Work: ...

    def broadcast(self, tensor: torch.Tensor, src: int = 0, async_op: bool = False) -> Work: ...


class _Avg:
    """Wraps a SUM Work so that waiting also divides by the world size."""

    def __init__(self, work, tensor: torch.Tensor, n: int):
        self.work, self.tensor, self.n = work, tensor, n

    def wait(self) -> bool:
        self.work.wait()
        self.tensor.div_(self.n)
        return True


class GroupMember:
    """`rank` and `world_size` of a communicator working on `self.group`."""

    group: dist.ProcessGroup | None = None

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)


class TorchCommunicator(GroupMember):
    """torch.distributed's built-in collectives (gloo ring/halving-doubling, NCCL rings/trees)."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum", async_op: bool = False) -> Work:
        if op not in ("sum", "avg"):
            raise ValueError(f"all_reduce op must be 'sum' or 'avg', got {op!r}")
        n = self.world_size
        if n == 1:
            return DONE
        # gloo has no AVG reduction: sum, then divide when the work completes.
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        work = _Avg(work, tensor, n) if op == "avg" else work
        if async_op:
            return work
        work.wait()
        return DONE

    def broadcast(self, tensor: torch.Tensor, src: int = 0, async_op: bool = False) -> Work:
        """`src` is a rank within this communicator's group (as in WeftCommunicator)."""
        if self.world_size == 1:
            return DONE
        # a global rank (group_src= needs torch >= 2.6); None is the default group
        root = src if self.group is None else dist.get_global_rank(self.group, src)
        work = dist.broadcast(tensor, src=root, group=self.group, async_op=True)
        if async_op:
            return work
        work.wait()
        return DONE
