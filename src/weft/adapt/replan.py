"""Re-planning the collectives when the world changes.

On every membership change (start, resize, failure) and when a policy returns
`Replan`, the trainer asks the `Replanner` for the all-reduce of the gradient
buffer over the live members: with `AdaptConfig.topology` it places the members
on their devices (each worker publishes `device/<wid>` in the job's store), ranks
every algorithm of weft.collectives (ring, double binary tree, flat, tree packing)
with the cost model on that fabric and picks the fastest (or keeps the fixed
`algorithm`); the collective then runs that schedule (`ScheduledComm`). Without a
topology the collectives are gloo's own.

`Replan(measure=True)` first re-measures the links: every pair of members exchanges
a buffer (round-robin rounds, pairs in parallel), and each link is scaled by the ratio,
measured over the topology's figure, of the pair it joins directly, or else the best
ratio of the pairs whose route uses it (a link is as fast as the fastest pair through it
shows; one slow or congested link thus shows where no faster pair passes). The measured
scales stay for later re-plans. (Routes are the Fabric's: where the real network breaks
ties between equal routes differently, a multi-hop estimate can be off.)

Predicted step time = compute per sample (measured) x the largest local batch
+ the predicted all-reduce (cost model; without a topology: the measured sync
time scaled by a ring's 2(n-1)/n bytes per rank).
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from weft.adapt.guard import GuardedCommunicator, GuardedWork, _Done

log = logging.getLogger("weft.adapt")


@dataclass
class CommPlan:
    algorithm: str  # "gloo" (torch's own all-reduce) or a weft.collectives algorithm
    chunk_bytes: int = 0
    schedule: object = None
    predicted_s: float | None = None  # the gradient all-reduce, by the cost model
    alternatives: dict = field(default_factory=dict)  # algorithm -> predicted seconds
    devices: list | None = None


def ring_factor(n: int) -> float:
    return 2 * (n - 1) / n if n > 1 else 0.0


class Replanner:
    def __init__(self, topology: str | None, algorithm: str = "auto", store=None):
        from weft.topology.io import resolve

        self.topology = resolve(topology) if topology else None
        self.algorithm, self.store = algorithm, store
        self.scale: dict[tuple[str, str], float] = {}  # measured scale per (directed) link

    # -- choosing -------------------------------------------------------------
    def devices(self, members: list[int]) -> list[str] | None:
        if self.store is None or not all(self.store.check([f"device/{w}"]) for w in members):
            return None
        return [self.store.get(f"device/{w}").decode() for w in members]

    def fabric(self, devices: list[str]):
        from weft.collectives.fabric import Fabric

        return Fabric(self.scaled(), devices)

    def scaled(self):
        """The topology with measured link scales applied (the nominal one before any)."""
        from weft.topology.model import Topology

        if not self.scale:
            return self.topology
        t = Topology(name=f"{self.topology.name}@measured")
        for dev in self.topology.devices:
            t.graph.add_node(dev.name, device=dev)
        for ln in self.topology.links:
            f = self.scale.get((ln.src, ln.dst), 1.0)
            t.add_link(ln.src, ln.dst, ln.bandwidth * f, ln.latency, ln.kind, bidirectional=False)
        return t

    def plan(self, members: list[int], nbytes: int) -> CommPlan:
        """The all-reduce for `nbytes` over `members` (in rank order)."""
        if self.topology is None or len(members) < 2:
            return CommPlan("gloo")
        devices = self.devices(members)
        if devices is None:
            log.warning("re-plan: some members published no device; using gloo's all-reduce")
            return CommPlan("gloo")
        from weft.collectives.autotune import ranked

        choices = ranked(self.fabric(devices), "allreduce", max(1, nbytes))
        alts: dict[str, float] = {}
        for c in choices:
            alts.setdefault(c.algorithm, c.predicted)
        pick = choices[0] if self.algorithm == "auto" else next(
            c for c in choices if c.algorithm == self.algorithm)
        return CommPlan(pick.algorithm, pick.chunk_bytes, pick.schedule, pick.predicted, alts,
                        devices)

    def kept(self, old: CommPlan, new: CommPlan, nbytes: int) -> float | None:
        """Predicted time, on the fabric `new` was planned for, of keeping `old`: its very
        schedule when the members are the same (e.g. after re-measuring the links), else
        its algorithm re-derived for the new members."""
        if new.devices is None or old.algorithm in ("gloo", "plan", "none"):
            return None
        if old.schedule is not None and old.devices == new.devices:
            from weft.collectives.costmodel import predict

            return float(predict(old.schedule, self.fabric(new.devices), max(1, nbytes),
                                 old.chunk_bytes))
        return new.alternatives.get(old.algorithm)

    def communicator(self, plan: CommPlan, failed, limit: float):
        if plan.schedule is None:
            return GuardedCommunicator(failed, limit)
        return ScheduledComm(plan, failed, limit)

    # -- measuring ------------------------------------------------------------
    def probe(self, rank: int, world: int, devices: list[str] | None, nbytes: int = 1 << 18,
              repeats: int = 2) -> dict:
        """Collective: measure every pair's bandwidth (bytes/s); update the device scales.
        Returns {"pairs": {(dev_a, dev_b): bytes/s}, "scale": {device: factor}}."""
        from weft.adapt.sync import pair_peer

        send = torch.ones(max(1, nbytes // 4))
        recv = torch.empty_like(send)
        rounds = world - 1 if world % 2 == 0 else world
        mine: dict[tuple[int, int], float] = {}
        for rnd in range(rounds):
            peer = pair_peer(rank, world, rnd)
            dist.barrier()  # the pairs of one round run at the same time, alone
            if peer is None:
                continue
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                for w in (dist.isend(send, peer), dist.irecv(recv, peer)):
                    w.wait(datetime.timedelta(seconds=60))
                best = min(best, time.perf_counter() - t0)
            mine[(min(rank, peer), max(rank, peer))] = send.numel() * 4 / best
        every: list = [None] * world
        dist.all_gather_object(every, mine)
        pairs: dict[tuple[int, int], float] = {}
        for d in every:
            for k, v in d.items():
                pairs[k] = min(v, pairs.get(k, v))
        return self.learn(pairs, devices)

    def learn(self, pairs: dict[tuple[int, int], float], devices: list[str] | None) -> dict:
        """Update the link scales from measured pair bandwidths {(rank a, rank b): bytes/s}
        of members on `devices`; returns what was measured and the scales."""
        out = {"pairs": {}, "scale": {}}
        if devices is None or self.topology is None:
            out["pairs"] = {f"{a}-{b}": v for (a, b), v in pairs.items()}
            return out
        from weft.collectives.fabric import Fabric

        nominal = Fabric(self.topology, devices)
        direct: dict[tuple[str, str], float] = {}  # from pairs joined by that link alone
        ratio: dict[tuple[str, str], float] = {}
        for (a, b), bw in pairs.items():
            r = bw / min(nominal.rank_bandwidth(a, b), nominal.rank_bandwidth(b, a))
            for route in (nominal.route(a, b), nominal.route(b, a)):
                for edge in route:
                    into = direct if len(route) == 1 else ratio
                    into[edge] = max(into.get(edge, 0.0), r)
            out["pairs"]["-".join(sorted((devices[a], devices[b])))] = bw
        ratio.update(direct)  # a direct pair measures its link; longer routes only bound it
        self.scale.update({e: min(10.0, max(1e-3, r)) for e, r in ratio.items()})
        out["scale"] = {f"{u}>{v}": f for (u, v), f in sorted(self.scale.items())}
        return out


def predict_step(compute_per_sample: float | None, local_batch: int, comm_s: float | None,
                 ) -> float | None:
    if compute_per_sample is None or comm_s is None:
        return None
    return compute_per_sample * local_batch + comm_s


class _Timed:
    """A BackgroundWork waited for in slices, as GuardedWork expects of torch's Work."""

    def __init__(self, work):
        self.work = work

    def wait(self, slice_td):
        try:
            return self.work.wait(slice_td.total_seconds())
        except TimeoutError:
            raise RuntimeError("timed out (slice)") from None


class ScheduledComm(GuardedCommunicator):
    """All-reduce on a weft.collectives schedule (run on a communication thread, waited for
    in failure-aware slices); broadcast and pair exchange as GuardedCommunicator."""

    def __init__(self, plan: CommPlan, failed, limit: float):
        from weft.collectives.progress import ProgressThread

        super().__init__(failed, limit)
        self.plan = plan
        self._thread = ProgressThread("weft-adapt-comm")

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum", async_op: bool = False):
        if op not in ("sum", "avg"):
            raise ValueError(f"all_reduce op must be 'sum' or 'avg', got {op!r}")
        n = self.world_size
        if n == 1:
            return _Done()
        from weft.collectives.executor import execute

        p = self.plan
        work = self._thread.submit(
            lambda: execute(p.schedule, tensor, None, p.chunk_bytes, timeout=self.limit))
        g = GuardedWork(_Timed(work), self.failed, self.limit,
                        (lambda: tensor.div_(n)) if op == "avg" else None)
        if async_op:
            return g
        g.wait()
        return _Done()
