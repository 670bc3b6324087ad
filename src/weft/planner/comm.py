"""Communication terms of a plan: collectives over concurrent groups, point-to-point sends.

    comm = Comm(Network(topology), CostParams(...))
    gs = comm.groups([["g0", "g1"], ["g2", "g3"]])       # the tp groups of a stage, say
    comm.collective("allreduce", gs, 4 << 20)           # seconds, all groups at once

A collective's time on one group is `weft.collectives`' cost model of the algorithm the
runtime runs there: the ring in group order (torch's gloo/NCCL ring, and what weft's
DataParallel asks of them), or with ``communicator="weft"`` the autotuner's choice
(ring, double binary tree or packed spanning trees, with its chunk size:
`weft.collectives.autotune.choose`) for groups of at most `exact` ranks. Per-message,
per-step and per-byte CPU costs are the model's `CostParams`. The ring is evaluated in
closed form (`ring_time`): what `costmodel.predict` gives for a ring schedule in one
piece (the tests check they agree), without building a `Fabric` per group.

Groups of one dimension run at the same time (every tp group of a stage all-reduces
together; every data-parallel group synchronises together), so they share links: the
ring's link term is charged at the most loaded link with all groups' ring hops routed at
once, over the most loaded link of the worst group alone (``congestion``). Results are
cached by the group's structure (per ring hop: bandwidth, latency and hop count), so
the thousand identical tp groups of a large cluster cost one evaluation.

Collectives measured on the ranks themselves (`weft.planner.collective_fit`: a latency and
a cost per byte per kind and group size, for local ranks that share their cores) replace
the ring model for the groups of the sizes measured (``fits``); tensor parallelism's are
charged at DTensor's own fits where measured (`Comm.dtensor`).
"""

from __future__ import annotations

from dataclasses import dataclass

from weft.collectives.costmodel import CostParams, predict
from weft.collectives.fabric import Fabric
from weft.collectives.ring import ring
from weft.planner.collective_fit import fitted_seconds
from weft.planner.network import Network, ring_pairs

STEPS = {"allreduce": 2, "reduce_scatter": 1, "all_gather": 1}
DEFAULT_PARAMS = CostParams()


@dataclass(frozen=True)
class Groups:
    """Concurrent groups of one dimension and their link profile (per byte per hop)."""

    groups: tuple[tuple[str, ...], ...]
    reps: dict  # signature -> a representative group
    alone: float  # worst group's most loaded link, seconds per byte per ring hop
    together: float  # with every group's ring at once

    @property
    def size(self) -> int:
        return len(self.groups[0]) if self.groups else 1

    @property
    def congestion(self) -> float:
        return self.together / self.alone if self.alone > 0 else 1.0


class Comm:
    def __init__(self, network: Network, params: CostParams = DEFAULT_PARAMS,
                 communicator: str = "torch", exact: int = 16, fits: tuple = ()):
        """`fits`: rows (kind, group size, latency s, s per byte) measured on the ranks
        (`weft.planner.collective_fit`); they replace the ring model for those groups."""
        self.net, self.params, self.communicator, self.exact = network, params, communicator, exact
        self.fits = tuple(fits)
        self._groups: dict = {}
        self._alg: dict = {}
        self._fabrics: dict = {}
        self._sigs: dict = {}
        self._coll: dict = {}  # (id of a cached Groups, kind, bytes) -> seconds

    # -- groups --------------------------------------------------------------------
    def signature(self, group) -> tuple:
        key = tuple(group)
        got = self._sigs.get(key)
        if got is None:
            got = self._sigs[key] = self._signature(key)
        return got

    def _signature(self, group) -> tuple:
        pairs = ring_pairs(group)
        sig = tuple((round(self.net.bandwidth(a, b), 3), round(self.net.latency(a, b), 12),
                     len(self.net.route(a, b))) for a, b in pairs)
        if self.communicator == "weft" and len(group) <= self.exact:
            sig += tuple(round(self.net.bandwidth(a, b), 3) for a in group for b in group
                         if a != b)
        return sig

    def groups(self, groups) -> Groups:
        key = tuple(tuple(g) for g in groups)
        got = self._groups.get(key)
        if got is not None:
            return got
        reps, alone = {}, 0.0
        hops = []
        for g in key:
            if len(g) < 2:
                continue
            sig = self.signature(g)
            if sig not in reps:
                reps[sig] = g
                load = self.net.loads([(a, b, 1.0) for a, b in ring_pairs(g)])
                alone = max(alone, float((load / self.net.cap).max(initial=0.0)))
            hops += [(a, b, 1.0) for a, b in ring_pairs(g)]
        together = float((self.net.loads(hops) / self.net.cap).max(initial=0.0)) if hops else 0.0
        got = Groups(key, reps, alone, max(together, alone))
        self._groups[key] = got
        return got

    # -- one group -------------------------------------------------------------------
    def _fabric(self, group) -> Fabric:
        key = tuple(group)
        f = self._fabrics.get(key)
        if f is None:
            f = Fabric(self.net.topology, list(group), paths=self.net.fabric_paths(group))
            self._fabrics[key] = f
        return f

    def predict_ring(self, kind: str, group, nbytes: float) -> float:
        """`weft.collectives.costmodel.predict` of the ring schedule (the reference)."""
        return predict(ring(kind, len(group)), self._fabric(group), int(nbytes),
                       int(nbytes) + 1, self.params)

    def ring_time(self, kind: str, group, nbytes: float) -> float:
        """`costmodel.predict` of a ring in group order with one piece, in closed form."""
        n = len(group)
        if n < 2 or nbytes <= 0:
            return 0.0
        p = self.params
        item = 4
        per = max(1, int(nbytes // item)) // n * item  # bytes of one shard
        pairs = ring_pairs(group)
        load = self.net.loads([(a, b, float(per)) for a, b in pairs])
        link_t = float((load / (self.net.cap * p.link_efficiency)).max(initial=0.0))
        lat = max(self.net.latency(a, b) for a, b in pairs)
        copy = 1.0 / p.copy_bw if p.copy_bw > 0 else 0.0
        relay = per * sum(len(self.net.route(a, b)) - 1 for a, b in pairs) / p.forward_bw \
            if p.forward_bw > 0 else 0.0
        total = 0.0
        nsteps = STEPS[kind] * (n - 1)
        for s in range(nsteps):
            reduce = kind == "reduce_scatter" or (kind == "allreduce" and s < n - 1)
            red = per / p.reduce_bw if reduce else 0.0
            cpu = 2 * p.alpha + red + 2 * per * copy
            if p.cores > 0:
                cpu = max(cpu, (2 * n * p.alpha + n * red + 2 * n * per * copy + relay
                                + n * p.step_overhead) / p.cores)
            work = max(link_t, cpu) if p.overlap else link_t + cpu
            total += work + lat + p.step_overhead
        return total

    def one(self, kind: str, group, nbytes: float) -> tuple[float, str]:
        """(seconds, algorithm) of `kind` on one group alone."""
        n = len(group)
        if n < 2 or nbytes <= 0:
            return 0.0, "-"
        key = (kind, self.signature(group), int(nbytes))
        got = self._alg.get(key)
        if got is not None:
            return got
        if self.communicator == "weft" and n <= self.exact:
            from weft.collectives.autotune import choose

            c = choose(self._fabric(group), kind, int(nbytes), params=self.params)
            got = (c.predicted, f"{c.algorithm}/{c.chunk_bytes >> 10}KiB")
        else:
            got = (self.ring_time(kind, group, nbytes), "ring")
        self._alg[key] = got
        return got

    # -- concurrent groups ---------------------------------------------------------------
    def collective(self, kind: str, gs: Groups, nbytes: float) -> float:
        """Seconds for `kind` of `nbytes` (the whole tensor) on every group of `gs` at once."""
        n = gs.size
        if n < 2 or nbytes <= 0:
            return 0.0
        key = (id(gs), kind, float(nbytes))
        got = self._coll.get(key)
        if got is None and self.fits:
            got = fitted_seconds(self.fits, kind, n, nbytes)
            if got is not None:
                self._coll[key] = got
        if got is None:
            worst = max(self.one(kind, g, nbytes)[0] for g in gs.reps.values())
            steps = STEPS[kind] * (n - 1)
            extra = steps * (nbytes / n) * (gs.together - gs.alone) / self.params.link_efficiency
            got = self._coll[key] = worst + max(extra, 0.0)
        return got

    def dtensor(self, kind: str, gs: Groups) -> str:
        """The kind to charge for `kind` issued by DTensor (tensor parallelism) on `gs`:
        its own fit ("dtensor_" + kind) where measured for groups of that size, else
        `kind` (DTensor runs the same gloo/NCCL collective through torch's functional
        collectives, which cost a few ms more per call on local ranks sharing cores)."""
        own = "dtensor_" + kind
        return own if fitted_seconds(self.fits, own, gs.size, 1.0) is not None else kind

    def algorithm(self, kind: str, gs: Groups, nbytes: float) -> str:
        if gs.size < 2 or not gs.reps:
            return "-"
        if fitted_seconds(self.fits, kind, gs.size, 1.0) is not None:
            return "measured"
        return self.one(kind, next(iter(gs.reps.values())), nbytes)[1]

    def p2p(self, pairs, nbytes: float, latency_s: float | None = None) -> float:
        """Seconds for every (src, dst) pair to send `nbytes` at once."""
        pairs = [(a, b) for a, b in pairs if a != b]
        return self.p2p_time(self.net.per_byte(pairs), nbytes, latency_s) if pairs else 0.0

    def p2p_time(self, per_byte: tuple[float, float], nbytes: float,
                 latency_s: float | None = None) -> float:
        """`p2p` from the pairs' `Network.per_byte` (seconds per byte, latency)."""
        if nbytes <= 0 or per_byte == (0.0, 0.0):
            return 0.0
        per, lat = per_byte
        lat = lat if latency_s is None else latency_s
        return nbytes * per / self.params.link_efficiency + lat + p2p_cpu(self.params, nbytes)


def p2p_cpu(params, nbytes: float) -> float:
    """What a point-to-point message of `nbytes` costs the two ranks' CPUs (`CostParams`:
    a per-message cost at each end and a copy in and out), links aside."""
    if nbytes <= 0:
        return 0.0
    copy = 2 * nbytes / params.copy_bw if params.copy_bw > 0 else 0.0
    return 2 * params.alpha + copy


def ring_link_time(comm: Comm, kind: str, group, nbytes: float) -> float:
    """The link part of a ring on `group` alone (for the breakdown in `explain`)."""
    n = len(group)
    if n < 2:
        return 0.0
    load = comm.net.loads([(a, b, nbytes / n) for a, b in ring_pairs(group)])
    return STEPS[kind] * (n - 1) * float((load / comm.net.cap).max(initial=0.0))


__all__ = ["Comm", "Groups", "p2p_cpu", "ring_link_time"]
