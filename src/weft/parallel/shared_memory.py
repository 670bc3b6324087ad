"""One block of host memory mapped by every rank of a process group on the same host.

Ranks that share a machine (Wavelet's co-located waves) can hand each other tensors through
memory instead of through gloo's TCP loopback, which copies every byte through the kernel
twice and needs the peer to be scheduled on the same core to take it: a reduce and a
broadcast of a 3.7 MB gradient between two processes pinned to one core took 2.5-8.3 ms
here, a copy of it 0.8 ms (docs/wavelet.md).

    block = SharedBlock.create(group, owner=0, nbytes=n)   # every rank of `group` calls it
    if block is not None:                                  # None: some rank could not map it
        t = block.tensor                                   # the same bytes on every rank

The owner creates a file in /dev/shm, reserves its bytes (``posix_fallocate``: a full tmpfs
fails here instead of killing a rank with SIGBUS later), and sends its name over `group`;
every rank maps it, the ranks agree that all of them did, and the owner removes the name.
The mapping outlives the name, so nothing is left in /dev/shm when a rank dies.
"""

from __future__ import annotations

import mmap
import os
import uuid

import torch
import torch.distributed as dist

SHM_DIR = "/dev/shm"


def _map(path: str, nbytes: int, create: bool) -> mmap.mmap:
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.posix_fallocate(fd, 0, nbytes)
        return mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)


class SharedBlock:
    """`nbytes` of memory mapped by every rank of a group (see the module doc)."""

    def __init__(self, mapping: mmap.mmap):
        self._mapping = mapping
        self.tensor = torch.frombuffer(mapping, dtype=torch.uint8)

    @classmethod
    def create(cls, group, owner: int, nbytes: int) -> SharedBlock | None:
        """Collective over `group` (`owner`: its rank in the group). None on every rank when
        any rank could not map the block (no /dev/shm, not enough room, another host)."""
        me = dist.get_rank(group)
        path = os.path.join(SHM_DIR, f"weft-{uuid.uuid4().hex}") if me == owner else None
        mapping, name = None, [path]
        if me == owner:
            try:
                mapping = _map(path, nbytes, create=True)
            except OSError:
                name = [None]
        dist.broadcast_object_list(name, src=dist.get_global_rank(group, owner), group=group)
        if me != owner and name[0] is not None:
            try:
                mapping = _map(name[0], nbytes, create=False)
            except OSError:
                mapping = None
        ok = torch.tensor([1 if mapping is not None else 0])
        dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)   # every rank mapped it (or not)
        if me == owner and name[0] is not None:
            os.unlink(name[0])
        if not ok.item():
            if mapping is not None:
                mapping.close()
            return None
        return cls(mapping)

    def close(self) -> None:
        """Drop this block's references to the mapping; it is unmapped when the last tensor
        that views it is freed (a tensor made by `torch.frombuffer` holds the mapping)."""
        self.tensor = self._mapping = None
