"""Synchronisation strategies, switchable at any step boundary.

* `sgd`  - synchronous SGD: gradients are summed with one all-reduce
  (weighted by each rank's share of the global batch, so uneven final
  batches still give the exact global-mean gradient), then every rank takes
  the same optimizer step. The monitors' statistics ride in the same buffer.
* `sma`  - synchronous model averaging (KungFu's SMA): every rank steps on
  its local gradient, then the parameters are averaged with one all-reduce.
* `pair` - decentralized pair averaging: every rank steps on its local
  gradient and averages its model with one peer (a round-robin pairing that
  changes every step). The exchange is asynchronous: it is started after the
  optimizer step and only waited for after the next forward/backward, so
  communication overlaps computation (AD-PSGD style, staleness one step).

For `sma`/`pair` the statistics go in an asynchronous all-reduce that
overlaps the optimizer step; every `noise_every` steps it also carries the
gradient so the noise scale stays measurable.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from weft.adapt.monitors import N_STATS
from weft.tensors import copy_from_flat, flatten, unflatten


def _set_grads(params, flat: torch.Tensor) -> None:
    for p, g in zip(params, unflatten(flat, params)):
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)


def pair_peer(rank: int, world: int, rnd: int) -> int | None:
    """Round-robin (circle method) partner of `rank` in round `rnd`; None = sits out (odd world)."""
    n = world + (world % 2)
    if n < 2:
        return None
    k = rnd % (n - 1)
    # Position 0 is fixed; the others rotate.
    pos = {0: 0}
    for i in range(1, n):
        pos[i] = (i - 1 + k) % (n - 1) + 1
    at = {v: r for r, v in pos.items()}
    # Circle method: positions (0, n-1), (1, n-2), ... are partners.
    q = at[n - 1 - pos[rank]]
    return q if q < world else None


class Strategy:
    name = "base"

    def apply(self, params, optimizer, comm, weight: float, stats: torch.Tensor,
              measure_noise: bool) -> tuple[torch.Tensor, float | None]:
        """Sync and step. With `measure_noise`, this rank's squared gradient norm goes into
        stats[0] and the mean gradient's is returned. Returns (summed stats, it or None)."""
        raise NotImplementedError

    def flush(self, params) -> None:
        """Finish pending communication (called at a step boundary before any change)."""

    def reset(self) -> None:
        """Drop pending communication (after a failed collective)."""


def grads_and_stats(params, stats: torch.Tensor, measure_noise: bool) -> torch.Tensor:
    """One buffer: the gradients of `params` flattened (zeros for a missing grad), then
    the statistics (one copy of the gradient, no concatenation afterwards). With
    `measure_noise`, this rank's |G_small|^2 is written into the statistics' first slot
    on the tensors' device (no host round trip before the all-reduce)."""
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
             for p in params]
    dtype = grads[0].dtype if grads else torch.float32
    buf = torch.cat(grads + [stats.to(dtype)])
    if measure_noise:
        g = buf[:-N_STATS]
        torch.dot(g, g, out=buf[-N_STATS])
    return buf


class SyncSGD(Strategy):
    name = "sgd"

    def apply(self, params, optimizer, comm, weight, stats, measure_noise):
        buf = grads_and_stats(params, stats, measure_noise)
        g = buf[:-N_STATS].mul_(weight)
        comm.all_reduce(buf, op="sum", async_op=True).wait()
        _set_grads(params, g)
        optimizer.step()
        # |G_big|^2 stays a tensor: Monitors.update reads it with the reduced statistics
        return buf[-N_STATS:].to(torch.float64), g.dot(g) if measure_noise else None


class _LocalStep(Strategy):
    def _stats_and_step(self, params, optimizer, comm, weight, stats, measure_noise):
        if measure_noise:
            buf = grads_and_stats(params, stats, True)
            buf[:-N_STATS].mul_(weight)
        else:
            buf = stats.clone()
        work = comm.all_reduce(buf, op="sum", async_op=True)  # overlaps the optimizer step
        optimizer.step()
        work.wait()
        g = buf[:-N_STATS]
        sq_big = g.dot(g) if measure_noise else None
        return buf[-N_STATS:].to(torch.float64), sq_big


class SMA(_LocalStep):
    name = "sma"

    def apply(self, params, optimizer, comm, weight, stats, measure_noise):
        out = self._stats_and_step(params, optimizer, comm, weight, stats, measure_noise)
        flat = flatten(params)
        comm.all_reduce(flat, op="avg", async_op=True).wait()
        copy_from_flat(params, flat)
        return out


class PairAveraging(_LocalStep):
    name = "pair"

    def __init__(self):
        self.round = 0
        self.pending = None  # (works, recv buffer)

    def _finish_exchange(self, params) -> None:
        if self.pending is None:
            return
        works, buf = self.pending
        self.pending = None
        for w in works:
            w.wait()
        copy_from_flat(params, (flatten(params) + buf) / 2)

    def apply(self, params, optimizer, comm, weight, stats, measure_noise):
        # Gradient was computed while last step's exchange was in flight; average now.
        self._finish_exchange(params)
        out = self._stats_and_step(params, optimizer, comm, weight, stats, measure_noise)
        peer = pair_peer(comm.rank, comm.world_size, self.round)
        self.round += 1
        if peer is not None:
            send = flatten(params)
            recv = torch.empty_like(send)
            exchange = getattr(comm, "exchange", None)
            works = exchange(send, recv, peer) if exchange else \
                [dist.isend(send, peer), dist.irecv(recv, peer)]
            self.pending = (works, recv)
        return out

    def flush(self, params) -> None:
        self._finish_exchange(params)

    def reset(self) -> None:
        self.pending = None


def make(name: str) -> Strategy:
    return {"sgd": SyncSGD, "sma": SMA, "pair": PairAveraging}[name]()


def consensus(model, optimizer, comm) -> None:
    """Average parameters, buffers and optimizer state over all ranks (makes replicas equal)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers())
               if t.is_floating_point()]
    for st in optimizer.state.values():
        tensors += [v for v in st.values() if torch.is_tensor(v) and v.is_floating_point()]
    if comm.world_size == 1 or not tensors:
        return
    flat = flatten(tensors, torch.float64)
    comm.all_reduce(flat, op="avg")
    copy_from_flat(tensors, flat)
