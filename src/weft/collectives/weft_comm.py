"""WeftCommunicator: the Communicator interface on topology-aware schedules.

    comm = WeftCommunicator("dgx1", algorithm="auto")     # inside an initialised group
    comm.all_reduce(grad, op="avg")
    work = comm.all_reduce(grad, async_op=True)           # runs in the background
    ...; work.is_completed(); work.wait()

Every collective runs on the communicator's own communication thread, in
issue order (the same on every rank), so async ones progress while the caller
computes; a synchronous call is an async one waited for at once.

Ranks are placed on the topology's compute devices in order (or on `devices`);
everything is checked when the communicator is made, before any byte is sent.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.distributed as dist

from weft.collectives.autotune import Choice, choose, schedule_for
from weft.collectives.communicator import DONE, GroupMember
from weft.collectives.costmodel import CostParams, lower_bound, predict
from weft.collectives.executor import DEFAULT_CHUNK, execute
from weft.collectives.fabric import Fabric
from weft.collectives.progress import BackgroundWork, ProgressThread
from weft.errors import TopologyError
from weft.topology.io import resolve


class WeftCommunicator(GroupMember):
    """Collectives scheduled on a topology (ring, double binary tree, tree packing)."""

    def __init__(self, topology="auto", devices: Sequence[str] | None = None,
                 algorithm: str = "auto", chunk_bytes: int | None = None, group=None,
                 params: CostParams | None = None, measure: bool = False,
                 timeout: float = 120.0):
        if not dist.is_initialized():
            raise RuntimeError("WeftCommunicator needs an initialised torch.distributed group")
        self.group = group
        n = dist.get_world_size(group)
        if topology == "auto":
            topology = f"mesh:{n}" if n > 1 else "ring:2"
        topo = resolve(topology)
        if devices is None:
            comp = [d.name for d in topo.compute_devices]
            if len(comp) != n:
                raise TopologyError(
                    f"topology {topo.name!r} has {len(comp)} compute devices but the process "
                    f"group has {n} ranks; pass devices=[...] naming one device per rank")
            devices = comp
        if len(devices) != n:
            raise TopologyError(f"{len(devices)} devices given for a process group of {n} ranks "
                                f"(ranks {sorted(set(range(len(devices))) ^ set(range(n)))[:8]} "
                                "have no device or no process)")
        self.fabric = Fabric(topo, devices) if n > 1 else None
        self.algorithm = algorithm
        self.chunk_bytes = chunk_bytes
        self.params = params or CostParams()
        self.measure = measure
        self.timeout = timeout
        self._progress = ProgressThread(f"weft-comm-{dist.get_rank(group)}")
        self.history: list[tuple[str, int, str, int]] = []  # (collective, bytes, alg, chunk)
        if algorithm != "auto" and n > 1:
            schedule_for(self.fabric, "allreduce", algorithm)  # fail early on a bad name

    # -- choosing -------------------------------------------------------------
    def plan(self, collective: str, nbytes: int, root: int = 0) -> Choice:
        if self.algorithm == "auto":
            c = choose(self.fabric, collective, nbytes, root, self.params,
                       measure=self._measure(collective, nbytes, root) if self.measure else None)
            if self.chunk_bytes:
                c = Choice(c.algorithm, self.chunk_bytes, c.schedule, c.predicted, c.bound)
            return c
        s = schedule_for(self.fabric, collective, self.algorithm, root)
        ch = self.chunk_bytes or DEFAULT_CHUNK
        return Choice(self.algorithm, ch, s, predict(s, self.fabric, nbytes, ch, self.params),
                      lower_bound(collective, self.fabric, nbytes, root))

    def _measure(self, collective: str, nbytes: int, root: int):
        def timed(c: Choice) -> float:
            x = torch.zeros(max(1, nbytes // 4))
            execute(c.schedule, x, self.group, c.chunk_bytes, timeout=self.timeout)
            t0 = time.perf_counter()
            execute(c.schedule, x, self.group, c.chunk_bytes, timeout=self.timeout)
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
            return float(t)
        return timed

    # -- running --------------------------------------------------------------
    def _submit(self, collective: str, tensor: torch.Tensor, root: int, async_op: bool,
                post=None):
        if self.world_size == 1:
            if post:
                post()
            if not async_op:
                return DONE
            work = BackgroundWork(lambda: tensor)
            work._run()
            return work

        def run():
            c = self.plan(collective, tensor.numel() * tensor.element_size(), root)
            self.history.append((collective, tensor.numel() * tensor.element_size(),
                                 c.algorithm, c.chunk_bytes))
            execute(c.schedule, tensor, self.group, c.chunk_bytes, timeout=self.timeout)
            if post:
                post()
            return tensor

        work = self._progress.submit(run)
        if async_op:
            return work
        work.wait()
        return DONE

    def close(self) -> None:
        """Finish the collectives already issued and stop the communication thread."""
        self._progress.close()

    def _root(self, r: int) -> int:
        if not 0 <= r < self.world_size:
            raise ValueError(f"root rank {r} is not in the process group of {self.world_size}")
        return r

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum", async_op: bool = False):
        if op not in ("sum", "avg"):
            raise ValueError(f"all_reduce op must be 'sum' or 'avg', got {op!r}")
        if op == "avg" and not (tensor.is_floating_point() or tensor.is_complex()):
            raise ValueError(f"all_reduce op='avg' needs a floating tensor, got {tensor.dtype}")
        n = self.world_size
        post = (lambda: tensor.div_(n)) if op == "avg" else None
        return self._submit("allreduce", tensor, 0, async_op, post)

    def broadcast(self, tensor: torch.Tensor, src: int = 0, async_op: bool = False):
        return self._submit("broadcast", tensor, self._root(src), async_op)

    def reduce(self, tensor: torch.Tensor, dst: int = 0, async_op: bool = False):
        """Sum into `dst`'s tensor (other ranks' tensors are left holding partial sums)."""
        return self._submit("reduce", tensor, self._root(dst), async_op)

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor, async_op: bool = False):
        """`output` (input.numel() // world_size elements) gets this rank's shard of the sum."""
        n = self.world_size
        if input.numel() != output.numel() * n:
            raise ValueError(f"reduce_scatter: input has {input.numel()} elements, expected "
                             f"output.numel() * world_size = {output.numel() * n}")
        buf = input.detach().reshape(-1).clone()
        lo = self.rank * output.numel()
        return self._submit("reduce_scatter", buf, 0, async_op,
                            lambda: output.view(-1).copy_(buf[lo:lo + output.numel()]))

    def all_gather(self, output: torch.Tensor, input: torch.Tensor, async_op: bool = False):
        """`output` (world_size * input.numel() elements) gets every rank's `input`, in rank order."""
        n = self.world_size
        if output.numel() != input.numel() * n:
            raise ValueError(f"all_gather: output has {output.numel()} elements, expected "
                             f"input.numel() * world_size = {input.numel() * n}")
        flat = output.view(-1)
        lo = self.rank * input.numel()
        flat[lo:lo + input.numel()].copy_(input.reshape(-1))
        return self._submit("all_gather", flat, 0, async_op)
