"""Wavelet tick-tock data parallelism: one job as several waves on the same workers.

Gang-scheduled data parallelism reaches its memory peak (the end of the forward) on every
device at the same moment. Wavelet (Wang et al., MLSys 2021) runs a second wave of the job
on the same devices, launched half an iteration later: one wave's peak meets the other's
trough, and one wave's computation fills the other's communication gaps.

    # world = waves x workers ranks; rank = wave * workers + worker; ranks with the same
    # worker share a device. Every rank trains on its own part of the batch:
    model = Wavelet(net, waves=2)
    loss = loss_fn(model(x), y)      # the tock wave starts its forward when the tick wave
    loss.backward()                  # is `signal_at` (default half) into its backward;
    opt.step(); opt.zero_grad()      # gradients end up averaged over every rank of every wave
    model.close()                    # after the last step: the last signal, the groups freed

Each wave runs `DataParallel` (bucketed gradients, reduced while the backward runs) over a
`WaveCommunicator`, so every rank ends the step with the mean gradient over all ranks of all
waves: with equal per-rank batches, exactly the gradient of one wave whose ranks take the
waves' batches together. `combine` says how: "last" (default) sums each bucket on the worker
into the last wave's, which alone all-reduces it across workers while its backward goes on
and hands the result back (one gradient per worker crosses the network per step, as for one
wave); "each" lets every wave all-reduce its own buckets across workers (the earlier waves'
traffic overlaps the later waves' computation, but each wave sends a whole gradient) and
averages the waves on the worker afterwards. With "last" and CPU gradients the waves of a
worker keep their gradient buckets in one block of shared memory (`local="shared"`, the
default; `weft.parallel.wavelet_shared`): the last wave sums the others' buckets straight
from their memory and writes the result back, so no gradient byte crosses a socket on the
worker; `local="gloo"` (and any case where the block cannot be mapped, e.g. CUDA tensors)
hands them over with gloo's reduce and broadcast. Either way no wave starts its next step before
the last wave's gradients of this step are reduced: the next forward needs the updated
parameters, and that is the price of the exactness: the last wave's final all-reduce is
waited for, as one wave's is (docs/wavelet.md, "Benchmark", says what that means for
throughput).

The phase is kept by one signal per step: when wave w's backward reaches `signal_at` (0: its
start, the wave's memory peak; 1: its end, when the gradients of every parameter exist and
its activations are freed; in between, by default 0.5: that fraction of the parameters have
gradients, so the next wave's forward overlaps the rest of this backward), its
rank sends a one-element message to wave w+1's rank on the same worker, whose forward waits
for it (bounded by `signal_timeout`). ``stagger=False`` launches the waves together (gang
scheduling) for comparison. Every wave must run the same steps: one training forward (grad
enabled, module in train mode) and one backward per step, and with ``signal_at > 0`` every
parameter that requires grad must get a gradient. Buffers (e.g. BatchNorm statistics) are
made equal at construction and then kept per rank.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from weft.collectives.communicator import DONE, Communicator, TorchCommunicator, Work
from weft.errors import PlanError, WeftError
from weft.parallel.data import DataParallel, _local, weak_hook
from weft.parallel.wavelet_shared import ALIGN, SharedGradients


class SignalTimeout(WeftError, RuntimeError):
    """A wave waited longer than `signal_timeout` for the wave before it."""


def layout(waves: int, world: int | None = None) -> tuple[int, int, int]:
    """(wave, worker, workers) of this rank: rank = wave * workers + worker."""
    world = dist.get_world_size() if world is None else world
    if waves < 1 or world % waves:
        raise PlanError(f"{world} ranks do not split into {waves} waves of equal size")
    n = world // waves
    rank = dist.get_rank()
    return rank // n, rank % n, n


def make_groups(waves: int) -> tuple[dist.ProcessGroup | None, dist.ProcessGroup | None]:
    """(this rank's wave group, this rank's worker group); every rank creates every group,
    in the same order, as torch.distributed requires. None stands for a group of one."""
    _, _, n = layout(waves)
    mine = dist.get_rank()
    wave_group = worker_group = None
    for w in range(waves):
        ranks = [w * n + i for i in range(n)]
        g = dist.new_group(ranks) if n > 1 else None
        if mine in ranks:
            wave_group = g
    for i in range(n):
        ranks = [w * n + i for w in range(waves)]
        g = dist.new_group(ranks) if waves > 1 else None
        if mine in ranks:
            worker_group = g
    return wave_group, worker_group


class _Then:
    """A Work that waits `first`, then runs `then()` (the worker-level reduction)."""

    def __init__(self, first: Work, then: Callable[[], object]):
        self.first, self.then = first, then

    def wait(self) -> bool:
        self.first.wait()
        self.then()
        return True


class _Single:
    """A Communicator of one rank."""

    rank, world_size = 0, 1

    def all_reduce(self, tensor, op="sum", async_op=False):
        return DONE

    def broadcast(self, tensor, src=0, async_op=False):
        return DONE


class _FromLast:
    """The Work of a wave before the last ("last" combine): its bucket was summed into the
    last wave's on the same worker; waiting takes the combined result back from there."""

    def __init__(self, reduced: Work, tensor: torch.Tensor, group, last: int):
        self.reduced, self.tensor, self.group, self.last = reduced, tensor, group, last

    def wait(self) -> bool:
        self.reduced.wait()
        dist.broadcast(self.tensor, src=dist.get_global_rank(self.group, self.last), group=self.group)
        return True


class _ToOthers:
    """The Work of the last wave ("last" combine): the all-reduce across workers of the
    worker's summed bucket, then divided by the waves (an average), then sent to the
    worker's other waves."""

    def __init__(self, across: Work, tensor: torch.Tensor, scale: int, group, last: int):
        self.across, self.tensor, self.scale = across, tensor, scale
        self.group, self.last = group, last

    def wait(self) -> bool:
        self.across.wait()
        if self.scale != 1:
            self.tensor.div_(self.scale)
        dist.broadcast(self.tensor, src=dist.get_global_rank(self.group, self.last), group=self.group)
        return True


COMBINES = ("last", "each")
LOCALS = ("shared", "gloo")   # how a worker's waves hand each other buckets ("last")


class WaveCommunicator:
    """Collectives over every rank of every wave, in two levels: across workers (`wave`, the
    ranks of one wave, overlapping the backward) and within a worker (`worker`, its
    co-located waves). An average over both levels is the average over all ranks (every
    wave has the same number of ranks). How the levels are combined (`combine`):

    * "each": every wave all-reduces its buckets across workers as its backward makes them
      (the earlier waves' all-reduces overlap the later waves' computation), then the
      worker's waves average theirs when the result is waited for. Every wave sends a whole
      gradient over the network each step.
    * "last": each bucket is first summed on the worker into the last wave's (the earlier
      waves have theirs ready before the last wave's backward makes it), only the last wave
      all-reduces it across workers, overlapping its own backward, and hands the result back
      to the worker's other waves. One gradient per worker crosses the network each step, as
      for one wave with the summed batch.
    """

    def __init__(self, wave: Communicator, worker: Communicator, combine: str = "last",
                 shared: SharedGradients | None = None):
        if combine not in COMBINES:
            raise PlanError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        self.wave, self.worker, self.combine = wave, worker, combine
        self.shared = shared  # "last" through the worker's shared memory (wavelet_shared)

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def world_size(self) -> int:
        return self.wave.world_size * self.worker.world_size

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum", async_op: bool = False) -> Work:
        waves = self.worker.world_size
        if self.combine == "each" or waves == 1:
            work = _Then(self.wave.all_reduce(tensor, op=op, async_op=True),
                         lambda: self.worker.all_reduce(tensor, op=op))
        elif self.shared is not None and self.shared.owns(tensor):
            work = self.shared.all_reduce(tensor, self.wave, op)
        else:
            group, last = self.worker.group, waves - 1
            if dist.get_rank(group) < last:
                work = _FromLast(dist.reduce(tensor, dst=dist.get_global_rank(group, last),
                                             group=group, async_op=True), tensor, group, last)
            else:  # the earlier waves posted theirs: this waits only for the local transfer
                dist.reduce(tensor, dst=dist.get_global_rank(group, last), group=group)
                work = _ToOthers(self.wave.all_reduce(tensor, op=op, async_op=True), tensor,
                                 waves if op == "avg" else 1, group, last)
        if async_op:
            return work
        work.wait()
        return DONE

    def broadcast(self, tensor: torch.Tensor, src: int = 0, async_op: bool = False) -> Work:
        """From global rank 0 (worker 0 of wave 0): along wave 0, then to every worker's
        other waves. `src` must be 0."""
        if src != 0:
            raise ValueError("WaveCommunicator broadcasts from rank 0 only")
        self.wave.broadcast(tensor, src=0)     # every wave: its worker 0's value
        self.worker.broadcast(tensor, src=0)   # every worker: its wave-0 rank's value
        return DONE


class Wavelet(nn.Module):
    """`module` trained as one of `waves` tick-tock waves (see the module doc)."""

    def __init__(self, module: nn.Module, waves: int = 2, stagger: bool = True,
                 make_communicator: Callable[[dist.ProcessGroup | None], Communicator]
                 = TorchCommunicator, bucket_cap_mb: float = 25.0,
                 signal_at: float = 0.5, signal_timeout: float = 300.0,
                 combine: str = "last", local: str = "shared"):
        super().__init__()
        if not signal_timeout > 0:
            raise PlanError(f"signal_timeout must be > 0 seconds, got {signal_timeout!r}")
        if combine not in COMBINES:
            raise PlanError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        if local not in LOCALS:
            raise PlanError(f"local must be one of {', '.join(LOCALS)}, got {local!r}")
        if not 0.0 <= signal_at <= 1.0:
            raise PlanError(f"signal_at must be in [0, 1] (a fraction of the backward), got "
                            f"{signal_at!r}")
        self.waves, self.stagger = waves, stagger
        self.wave, self.worker, self.workers = layout(waves)
        wave_group, worker_group = make_groups(waves)
        self._groups = [g for g in (wave_group, worker_group) if g is not None]
        params = [p for p in module.parameters() if p.requires_grad]
        self.shared = None
        if (combine == "last" and local == "shared" and waves > 1
                and all(_local(p).device.type == "cpu" for p in params)):
            bound = sum(_local(p).numel() * p.element_size() + ALIGN for p in params)
            self.shared = SharedGradients.create(worker_group, self.wave, waves, bound)
        self.local = "shared" if self.shared is not None else "gloo"  # what the waves use
        wave_comm = make_communicator(wave_group) if self.workers > 1 else _Single()
        worker_comm = TorchCommunicator(worker_group) if waves > 1 else _Single()
        self.comm = WaveCommunicator(wave_comm, worker_comm, combine, self.shared)
        # DataParallel broadcasts every parameter and buffer through self.comm: every replica
        # of every wave starts as global rank 0's
        self.dp = DataParallel(module, communicator=self.comm, bucket_cap_mb=bucket_cap_mb,
                               broadcast_buffers=False,
                               allocate=self.shared.allocate if self.shared else None)
        self.module = module
        self.timeout = datetime.timedelta(seconds=signal_timeout)
        self.prev = (self.wave - 1) * self.workers + self.worker  # the wave before, same worker
        self.next = (self.wave + 1) * self.workers + self.worker
        self._flag_in = torch.zeros(1)
        self._flag_out = torch.ones(1)
        self._sends: list = []
        self.steps = 0
        self.signal_at = signal_at
        self._threshold = max(1, math.ceil(signal_at * len(params)))
        self._armed: int | None = None   # the step whose signal waits for gradients
        self._ready = 0
        if signal_at > 0 and stagger and self.wave < waves - 1:
            for p in params:
                p.register_post_accumulate_grad_hook(weak_hook(self._on_grad))
        self.started: list[float] = []    # time.time() of each staggered forward's start
        self.signalled: list[float] = []  # ... and of each signal to the next wave

    @property
    def shared_bytes(self) -> int:
        """Bytes of this rank's gradient buckets in the worker's shared memory (0 with
        `local="gloo"`): host memory the CPU allocator does not see."""
        return self.shared.per_wave if self.shared is not None else 0

    def _staggered(self) -> bool:
        return (self.stagger and self.waves > 1 and torch.is_grad_enabled()
                and self.module.training)

    def _wait_turn(self) -> None:
        """Block until the wave before this one has started this step's backward."""
        if self.wave == 0:
            return
        work = dist.irecv(self._flag_in, src=self.prev, tag=self.steps % 2**20)
        try:
            done = work.wait(timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - gloo raises on timeout or a dead peer
            raise SignalTimeout(self._late(exc)) from exc
        if done is False:
            raise SignalTimeout(self._late(None))

    def _late(self, exc) -> str:
        cause = f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}" \
            if exc is not None else ""
        return (f"wave {self.wave} (rank {dist.get_rank()}) waited more than "
                f"{self.timeout.total_seconds():g} s for the signal of wave {self.wave - 1} "
                f"(rank {self.prev}) at step {self.steps}; every wave must run the same "
                f"training steps{cause}")

    def _signal(self, step: int) -> None:
        """Tell the next wave on this worker that this wave's backward of `step` has begun."""
        for w in self._sends:
            w.wait(timeout=self.timeout)
        self.signalled.append(time.time())
        self._sends = [dist.isend(self._flag_out, dst=self.next, tag=step % 2**20)]

    def _on_grad(self, p) -> None:
        if self._armed is None:
            return
        self._ready += 1
        if self._ready >= self._threshold:
            step, self._armed = self._armed, None
            self._signal(step)

    def forward(self, *args, **kwargs):
        staggered = self._staggered()
        if staggered:
            self._wait_turn()
            self.started.append(time.time())
        out = self.dp(*args, **kwargs)
        if staggered:
            step = self.steps
            self.steps += 1
            if self.wave < self.waves - 1 and self.signal_at > 0:
                self._armed, self._ready = step, 0
            elif self.wave < self.waves - 1:
                first = _first_tensor(out)
                if first is None or not first.requires_grad:
                    raise PlanError("Wavelet: the forward's output has no tensor that requires "
                                    "grad, so the next wave cannot be signalled at its backward")
                fired = []

                def hook(grad, step=step):
                    if not fired:  # once, when the backward reaches the output
                        fired.append(step)
                        self._signal(step)
                    return grad

                first.register_hook(hook)
        return out

    def finish(self) -> None:
        """Wait for this rank's outstanding signal (call once after the last step)."""
        for w in self._sends:
            w.wait(timeout=self.timeout)
        self._sends = []
        if self.shared is not None:
            self.shared.finish()

    def close(self) -> None:
        """`finish`, then destroy the wave and worker process groups this model made; it
        cannot train after. Call it when a process builds more models: every gloo group
        keeps a thread that wakes every 10 ms, and 50 idle groups slowed a 2-rank data-
        parallel step by 10-20% here (docs/wavelet.md)."""
        from weft.parallel.groups import destroy

        self.finish()
        # a group's transport (and its thread) lives as long as something refers to it
        self.comm.wave = self.comm.worker = _Closed()
        if self.shared is not None:  # the buckets' memory stays while the gradients view it
            self.shared.close()
            self.shared = self.comm.shared = None
        groups, self._groups = self._groups, []
        destroy(groups)


class _Closed:
    """The communicators of a closed Wavelet."""

    def __getattr__(self, name):
        raise PlanError("this Wavelet was closed (close() destroyed its process groups); build "
                        "a new one to train again")


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None
