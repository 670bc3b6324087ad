"""Wavelet's worker-level combine ("last") through memory shared by a worker's waves.

Every wave's gradient buckets live in one block of host memory that all the waves on the
worker map (`SharedBlock`), at the same offset in each wave's region. When a bucket is ready
an earlier wave only says so (a one-element message over the worker group); the last wave
adds the earlier waves' buckets into its own straight from their memory, all-reduces the sum
across workers while its backward goes on, divides by the waves, writes the result into the
earlier waves' buckets and tells them. No gradient byte crosses a socket on the worker,
where gloo's reduce and broadcast copy each through TCP loopback (docs/wavelet.md).

Used for CPU gradients when the waves of a worker can map one block; otherwise Wavelet
combines through gloo messages (`WaveCommunicator`'s own "last" path).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from weft.collectives.communicator import Work
from weft.parallel.shared_memory import SharedBlock

ALIGN = 64  # bytes: every bucket starts on a cache line


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class SharedGradients:
    """The bucket memory of a worker's waves and the "last" combine over it."""

    def __init__(self, block: SharedBlock, per_wave: int, wave: int, waves: int, group):
        self.block, self.per_wave, self.wave, self.waves = block, per_wave, wave, waves
        self.group, self.last = group, waves - 1
        self.peers = [dist.get_global_rank(group, w) for w in range(waves)]
        self._used = 0
        self._slots: dict[int, int] = {}       # data_ptr of this wave's bucket -> its offset
        self._flag = torch.ones(1)
        self._sends: list = []

    @classmethod
    def create(cls, group, wave: int, waves: int, nbytes: int) -> SharedGradients | None:
        """Collective over the worker group (one rank per wave); `nbytes`: an upper bound of
        one wave's bucket bytes (ALIGN per bucket included). None where the block could not
        be mapped by every wave."""
        per_wave = _aligned(nbytes)
        block = SharedBlock.create(group, owner=waves - 1, nbytes=per_wave * waves)
        return None if block is None else cls(block, per_wave, wave, waves, group)

    def region(self, wave: int, offset: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
        start = wave * self.per_wave + offset
        nbytes = numel * dtype.itemsize
        return self.block.tensor[start:start + nbytes].view(dtype)

    def allocate(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A bucket's buffer in this wave's region (DataParallel's `allocate`): the waves
        allocate their buckets in the same order, so a bucket has one offset on every wave."""
        if device.type != "cpu":
            raise ValueError(f"shared gradient buckets are host memory, got a {device} bucket")
        nbytes = numel * dtype.itemsize
        if self._used + nbytes > self.per_wave:
            raise ValueError(f"the wave's buckets need more than the {self.per_wave} bytes "
                             f"mapped for them")
        t = self.region(self.wave, self._used, numel, dtype)
        self._slots[t.data_ptr()] = self._used
        self._used = _aligned(self._used + nbytes)
        return t

    def owns(self, tensor: torch.Tensor) -> bool:
        return tensor.data_ptr() in self._slots and tensor.is_contiguous()

    def _send(self, dst_wave: int, tag: int) -> None:
        self._sends = [w for w in self._sends if not w.is_completed()]
        self._sends.append(dist.isend(self._flag, dst=self.peers[dst_wave], group=self.group,
                                      tag=tag))

    def _recv(self, src_wave: int, tag: int) -> None:
        dist.recv(torch.empty(1), src=self.peers[src_wave], group=self.group, tag=tag)

    def finish(self) -> None:
        """Wait for this rank's outstanding messages."""
        for w in self._sends:
            w.wait()
        self._sends = []

    def all_reduce(self, tensor: torch.Tensor, across, op: str) -> Work:
        """The combine of one bucket (`tensor`, in this wave's region): the sum over the
        worker's waves all-reduced by `across` (the workers of this wave) with `op`, then,
        for "avg", divided by the waves; every wave's bucket ends with the result."""
        offset = self._slots[tensor.data_ptr()]
        tag = offset // ALIGN   # one tag per bucket: a bucket's messages never pass another's
        if self.wave < self.last:
            self._send(self.last, tag)     # ready: the last wave reads it from our memory
            return _Told(self, tag)
        for w in range(self.last):         # the earlier waves' buckets are ready ...
            self._recv(w, tag)
        others = [self.region(w, offset, tensor.numel(), tensor.dtype)
                  for w in range(self.last)]
        for o in others:                   # ... and summed here, straight from their memory
            tensor.add_(o)
        return _Back(self, across.all_reduce(tensor, op=op, async_op=True), tensor, others,
                     self.waves if op == "avg" else 1, tag)

    def close(self) -> None:
        self.finish()
        self._slots.clear()
        self.block.close()


class _Told:
    """An earlier wave's Work: done when the last wave says the result is in our bucket."""

    def __init__(self, shared: SharedGradients, tag: int):
        self.shared, self.tag = shared, tag

    def wait(self) -> bool:
        self.shared._recv(self.shared.last, self.tag)
        return True


class _Back:
    """The last wave's Work: the all-reduce across workers, the average over the waves, and
    the result written into the earlier waves' buckets."""

    def __init__(self, shared: SharedGradients, across: Work, tensor: torch.Tensor,
                 others: list[torch.Tensor], scale: int, tag: int):
        self.shared, self.across, self.tensor, self.others = shared, across, tensor, others
        self.scale, self.tag = scale, tag

    def wait(self) -> bool:
        self.across.wait()
        if self.scale != 1:
            self.tensor.div_(self.scale)
        for w, o in enumerate(self.others):
            o.copy_(self.tensor)
            self.shared._send(w, self.tag)
        return True
