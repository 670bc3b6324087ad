"""Data parallelism for an unmodified nn.Module.

`DataParallel(module)` averages gradients across ranks with bucketed,
asynchronous all-reduces that start while backward is still running
(gradient-ready hooks), through a `Communicator`, so collective algorithms
plug in without touching this runtime. `data_parallel(module, backend="ddp")`
returns torch's own DistributedDataParallel instead.

    model = data_parallel(Net())            # weft runtime, torch collectives
    loss = loss_fn(model(x), y); loss.backward(); opt.step()
"""

from __future__ import annotations

import contextlib
import random
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Variable

from weft.collectives.communicator import Communicator, TorchCommunicator, Work


def weak_hook(method):
    """A gradient hook calling the bound `method` through a weak reference to its object.
    A tensor keeps its hooks where Python's garbage collector cannot see them, so a module
    holding its parameters and hooked to them by its own bound method is a cycle that is
    never collected: every DataParallel ever built stayed alive with its model, buckets
    and communicator (and the communicator's process group's transport thread)."""
    ref = weakref.WeakMethod(method)

    def hook(p):
        m = ref()
        if m is not None:
            m(p)
    return hook


def _local(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor behind `t`: a DTensor's local shard (tensor-parallel parameters)."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def _placed_like(grad: torch.Tensor, p: nn.Parameter) -> torch.Tensor:
    """A DTensor gradient laid out as its parameter (autograd may hand back e.g. Replicate
    for a Shard(0) parameter); plain tensors pass through."""
    if hasattr(grad, "placements") and tuple(grad.placements) != tuple(p.placements):
        return grad.redistribute(p.device_mesh, p.placements)
    return grad


def _like(view: torch.Tensor, p: nn.Parameter) -> torch.Tensor:
    """`view` (a bucket slice) as p's gradient: a DTensor with p's layout when p is one."""
    if not hasattr(p, "device_mesh"):
        return view
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(view, p.device_mesh, p.placements, run_check=False,
                              shape=p.shape, stride=p.stride())


@dataclass
class _Bucket:
    params: list[nn.Parameter]
    numel: int
    ready: int = 0
    work: Work | None = None
    flat: torch.Tensor | None = None


FIRST_BUCKET_BYTES = 2**20  # the first bucket's cap (torch DDP's too); the rest get bucket_cap_mb


class DataParallel(nn.Module):
    """Averages gradients over all ranks of `communicator` after each backward.

    Parameters and buffers are broadcast from rank 0 at construction, so
    every replica starts equal. Gradients of parameters that received none
    in a step count as zeros (every rank then agrees on the bucket layout).
    Tensor-parallel (DTensor) parameters are averaged shard by shard: the
    communicator's group then holds one rank per replica of the same shard.
    `allocate(numel, dtype, device)`, if given, makes each bucket's flat gradient buffer (in
    bucket order; zeros by default), e.g. in memory shared with other processes.
    """

    def __init__(self, module: nn.Module, communicator: Communicator | None = None,
                 bucket_cap_mb: float = 25.0, broadcast_buffers: bool = True,
                 allocate: Callable[[int, torch.dtype, torch.device], torch.Tensor] | None = None):
        super().__init__()
        self.module = module
        self.comm = communicator if communicator is not None else TorchCommunicator()
        self.broadcast_buffers = broadcast_buffers
        self._sync = True
        self._queued = False
        params = [p for p in module.parameters() if p.requires_grad]
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                self.comm.broadcast(_local(t.data), src=0)
        self.buckets = self._make_buckets(params, int(bucket_cap_mb * 2**20))
        self._where = {id(p): b for b, bucket in enumerate(self.buckets) for p in bucket.params}
        # Each bucket owns one flat buffer; gradients live in it as views, so the
        # all-reduce works in place and nothing is copied back afterwards.
        self._views: dict[int, torch.Tensor] = {}
        for bucket in self.buckets:
            p0 = bucket.params[0]
            bucket.flat = (allocate(bucket.numel, p0.dtype, _local(p0).device) if allocate
                           else torch.zeros(bucket.numel, dtype=p0.dtype, device=p0.device))
            offset = 0
            for p in bucket.params:
                n = _local(p).numel()
                self._views[id(p)] = bucket.flat[offset:offset + n].view_as(_local(p))
                offset += n
        # One rank: nothing to average, so no hooks and no overhead.
        self._hooks = ([p.register_post_accumulate_grad_hook(weak_hook(self._on_grad))
                        for p in params]
                       if self.comm.world_size > 1 else [])

    @staticmethod
    def _make_buckets(params, cap_bytes: int) -> list[_Bucket]:
        # Gradients become ready roughly in reverse registration order. The first
        # bucket is small (FIRST_BUCKET_BYTES) so communication starts early in backward.
        buckets, cur, size, dtype = [], [], 0, None
        for p in reversed(params):
            nbytes = _local(p).numel() * p.element_size()
            cap = min(cap_bytes, FIRST_BUCKET_BYTES) if not buckets else cap_bytes
            if cur and (size + nbytes > cap or p.dtype != dtype):
                buckets.append(_Bucket(cur, sum(_local(q).numel() for q in cur)))
                cur, size = [], 0
            cur.append(p)
            size += nbytes
            dtype = p.dtype
        if cur:
            buckets.append(_Bucket(cur, sum(_local(q).numel() for q in cur)))
        return buckets

    def forward(self, *args, **kwargs):
        if self.broadcast_buffers and self._sync and any(True for _ in self.module.buffers()):
            with torch.no_grad():
                for b in self.module.buffers():
                    self.comm.broadcast(b.data, src=0)
        return self.module(*args, **kwargs)

    @property
    def syncing(self) -> bool:
        """Whether a backward averages the gradients now (False inside `no_sync`)."""
        return self._sync

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally (no communication) inside this block."""
        old, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = old

    # -- the gradient pipeline --------------------------------------------
    def _on_grad(self, p: nn.Parameter) -> None:
        if not self._sync:
            return
        if not self._queued:
            self._queued = True
            Variable._execution_engine.queue_callback(self._finish)
        self._on_grad_ready_copy(p)
        b = self._where[id(p)]
        self.buckets[b].ready += 1
        self._launch_ready()

    def _on_grad_ready_copy(self, p: nn.Parameter) -> None:
        """Point p.grad at its slot in the bucket buffer (copying once if autograd made a new one)."""
        view = self._views[id(p)]
        if p.grad is None or _local(p.grad) is not view:
            if p.grad is None:
                view.zero_()
            else:
                view.copy_(_local(_placed_like(p.grad, p)))
            p.grad = _like(view, p)

    def _launch_ready(self, force: bool = False) -> None:
        """Start buckets in index order (the same order on every rank)."""
        for bucket in self.buckets:
            if bucket.work is not None:
                continue
            if bucket.ready < len(bucket.params) and not force:
                return
            for p in bucket.params:  # params that got no gradient count as zeros
                self._on_grad_ready_copy(p)
            bucket.work = self.comm.all_reduce(bucket.flat, op="avg", async_op=True)

    def _finish(self) -> None:
        self._launch_ready(force=True)
        for bucket in self.buckets:
            bucket.work.wait()  # gradients are views of bucket.flat: nothing to copy back
            bucket.work, bucket.ready = None, 0
        self._queued = False

    def sync_gradients(self) -> None:
        """Average the current .grad of every parameter now (e.g. after no_sync steps)."""
        if self.comm.world_size == 1:
            return
        for bucket in self.buckets:
            bucket.ready = len(bucket.params)
        self._finish()


def data_parallel(module: nn.Module, backend: str = "weft", communicator: Communicator | None = None,
                  **kw) -> nn.Module:
    """Wrap `module` for data parallelism: backend 'weft' (DataParallel) or 'ddp' (torch DDP)."""
    if backend == "weft":
        return DataParallel(module, communicator=communicator, **kw)
    if backend == "ddp":
        if communicator is not None:
            raise ValueError("backend='ddp' uses torch's own collectives; pass communicator= only "
                             "with backend='weft' (or register a DDP comm hook)")
        return nn.parallel.DistributedDataParallel(module, **kw)
    raise ValueError(f"unknown data-parallel backend {backend!r}; use 'weft' or 'ddp'")


def unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside a weft or DDP wrapper."""
    while isinstance(module, (DataParallel, nn.parallel.DistributedDataParallel)):
        module = module.module
    return module


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the same seed on every rank gives equal initial weights)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed_loader(dataset, batch_size: int, shuffle: bool = True, seed: int = 0,
                       drop_last: bool = True, **kw) -> torch.utils.data.DataLoader:
    """A DataLoader over this rank's shard (DistributedSampler); `batch_size` is per rank.

    Call `loader.sampler.set_epoch(epoch)` each epoch for a fresh shuffle.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    if dist.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed,
                                     drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kw)
