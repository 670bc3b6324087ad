"""PipeDream's hierarchical partitioner: solve inside a node, then across nodes.

For workers on H hosts of n workers each (the topology's levels: fast links
inside a host, slower ones across hosts), the planner works level by level as
in the PipeDream paper (Narayanan et al., SOSP'19, section 3.1):

* level 0 (one host, its n workers and intra-host bandwidth): the flat DP of
  `weft.planner.cost.CostModel` gives ``A0[i, j]``, the best time of the
  layer range [i, j) as a pipeline (stages, replication) inside one host, for
  every range;
* level 1 (hosts as workers, inter-host bandwidth B): a top-level stage is a
  layer range [i, j) whose level-0 solution is replicated on h consecutive
  hosts: ``T1(i, j, h) = A0[i, j] / h + 2 (h-1)/h * params[i:j] / B``; a
  boundary between top-level stages costs ``M * 2 * act_bytes / B``; and
  ``A1[i, m] = min over the first top-level stage [i, j) x h hosts of
  max(T1, boundary, A1[j, m - h])``.

The result is exact for this model over the hierarchical plan space (checked
against brute force in the tests). Ties are broken towards plans that keep
stage boundaries inside hosts: a cut across hosts must win by more than a
relative 1e-9. In the plan, an inner stage on host-local ranks [a, a+r)
replicated on hosts g0..g0+h-1 runs on ranks ordered replica-major
(``[g0*n + a, (g0+1)*n + a, ..., g0*n + a+1, ...]``), so the schedule's
"micro-batch mb goes to replica mb % replicas" sends every micro-batch
through the same host (mb % h) in every inner stage: only top-level
boundaries cross hosts. Hosts are assumed alike (the first host's bandwidths
and memory are used for all); B is the slowest same-position link between
consecutive hosts.
"""

from __future__ import annotations

import numpy as np

from weft.errors import PlanError
from weft.parallel.pipeline.stages import PipelinePlan, Stage
from weft.planner.cost import CostModel, workers_of
from weft.planner.profile import ModelProfile
from weft.planner.settings import UNCALIBRATED, PlannerSettings
from weft.topology.model import Topology

TIE = 1e-9  # a cut across hosts must be better by more than this (relative)


def host_groups(topology: Topology, workers: int | None = None) -> list[list[str]]:
    """The chosen workers grouped by host, in rank order."""
    names = set(workers_of(topology, workers))
    groups = [[d for d in devs if d in names] for devs in topology.hosts().values()]
    return [g for g in groups if g]


def is_hierarchical(topology: Topology, workers: int | None = None) -> bool:
    """True when the workers span >= 2 hosts with the same number of workers each."""
    groups = host_groups(topology, workers)
    return len(groups) > 1 and len({len(g) for g in groups}) == 1


class Hierarchy:
    def __init__(self, profile: ModelProfile, topology: Topology, workers: int | None = None,
                 micro_batch: int | None = None, microbatches: int = 4,
                 optimizer_states: int = 1, stash: bool = True,
                 settings: PlannerSettings = UNCALIBRATED):
        self.groups = host_groups(topology, workers)
        if not is_hierarchical(topology, workers):
            sizes = [len(g) for g in self.groups]
            raise PlanError(f"hierarchical partitioning needs workers on >= 2 hosts with the "
                            f"same number of workers each; topology {topology.name!r} gives "
                            f"hosts of {sizes} workers (use method='flat')")
        self.H, self.n = len(self.groups), len(self.groups[0])
        self.node = CostModel.build(profile, topology, self.n, micro_batch,
                                    microbatches=microbatches, optimizer_states=optimizer_states,
                                    stash=stash, settings=settings)
        self.inter = min(topology.path_bandwidth(self.groups[g][q], self.groups[(g + 1) % self.H][q])
                         or 1e-9 for g in range(self.H) for q in range(self.n))
        self.devices = [d for g in self.groups for d in g]
        self.L, self.M = self.node.L, microbatches
        self._a0 = None

    # -- costs ---------------------------------------------------------------------
    def level0(self) -> np.ndarray:
        """A0[i, j]: best time of layers [i, j) on one host (inf where i >= j or nothing fits).

        The flat DP of every range at once: ``B[i, j, m]`` = best time of layers [i, j) on
        the host's last m workers = min over the first stage [i, k) on r workers of
        max(stage, boundary after k-1, B[k, j, m - r]) (equal to `CostModel.table(j)`
        column by column; the tests check it), vectorised over (i, k, j) in blocks of i.
        """
        if self._a0 is not None:
            return self._a0[:, :, self.n]
        node, L, n = self.node, self.L, self.n
        B = np.full((L + 1, L + 1, n + 1), np.inf)
        B[np.arange(L + 1), np.arange(L + 1), 0] = 0.0
        self._ch0 = np.zeros((L + 1, L + 1, n + 1, 2), dtype=np.int32)
        I, K = np.arange(L + 1)[:, None], np.arange(L + 1)[None, :]
        valid = K > I
        block = max(1, 4_000_000 // (L + 1) ** 2)
        for m in range(1, n + 1):
            a = n - m
            for r in range(m, 0, -1):  # r == m (no cut inside the host) first
                first = np.where(valid & node.fits(I, K, a, r), node.stage_time(I, K, a, r),
                                 np.inf)
                if r == m:
                    B[:, :, m] = first
                    self._ch0[:, :, m] = np.stack(np.broadcast_arrays(K, r), axis=-1)
                    continue
                # the boundary after layer k-1 from rank a+r-1 to a+r (all inner links alike
                # within the host's bandwidth matrix)
                cut = np.maximum(first, node.microbatches * 2 * node.out_bytes[
                    np.maximum(K - 1, 0)] / node.bandwidth[a + r - 1, a + r])
                rest = B[:, :, m - r]  # [k, j]
                for i0 in range(0, L + 1, block):
                    v3 = np.maximum(cut[i0:i0 + block, :, None], rest[None, :, :])
                    k = v3.argmin(axis=1)
                    v = np.take_along_axis(v3, k[:, None, :], 1)[:, 0, :]
                    cur = B[i0:i0 + block, :, m]
                    better = v < cur
                    cur[better] = v[better]
                    self._ch0[i0:i0 + block, :, m][better] = np.stack(
                        [k[better], np.full(better.sum(), r)], axis=-1)
        self._a0 = B
        return B[:, :, n]

    def inner(self, i: int, j: int) -> tuple[list, list]:
        """(bounds, replicas) of the best level-0 solution of layers [i, j)."""
        self.level0()
        bounds, reps, m = [], [], self.n
        while i < j:
            k, r = (int(v) for v in self._ch0[i, j, m])
            bounds.append((i, k))
            reps.append(r)
            i, m = k, m - r
        return bounds, reps

    def top_time(self, a0, i, j, h: int):
        """A level-0 solution of layers [i, j) replicated on h hosts."""
        if h == 1:
            return a0
        params = self.node.c_params[j] - self.node.c_params[i]
        return a0 / h + 2 * (h - 1) / h * params / self.inter

    def boundary(self, j):
        return self.M * 2 * self.node.out_bytes[np.asarray(j) - 1] / self.inter

    def evaluate(self, top: list[tuple[int, int, int]], inner: list[tuple[list, list]]):
        """(time, fits) of a hierarchical plan: top-level stages (i, j, hosts), each with
        its inner (bounds, replicas) on one host."""
        worst, ok = 0.0, True
        for k, ((i, j, h), (bounds, reps)) in enumerate(zip(top, inner)):
            t, fits = self.node.evaluate(bounds, reps)
            worst = max(worst, float(self.top_time(t, i, j, h)))
            ok &= fits
            if k < len(top) - 1:
                worst = max(worst, float(self.boundary(j)))
        return worst, ok

    # -- the level-1 dynamic program -------------------------------------------------
    def solve(self):
        """(time, top-level stages [(i, j, hosts)], their inner (bounds, replicas))."""
        L, H = self.L, self.H
        a0 = self.level0()
        A = np.full((L + 1, H + 1), np.inf)
        choice = np.zeros((L + 1, H + 1, 2), dtype=int)
        A[L, 0] = 0.0
        I = np.arange(L)[:, None]
        J = np.arange(L)[None, :]
        bnd = np.concatenate([[np.inf], self.boundary(np.arange(1, L))])  # cut before layer j
        for m in range(1, H + 1):
            best = self.top_time(a0[:L, L], np.arange(L), L, m)  # no cut across hosts
            arg = np.tile([L, m], (L, 1))
            for h in range(1, m):
                val = np.maximum(np.maximum(self.top_time(a0[:L, :L], I, J, h), bnd[None, :]),
                                 A[None, :L, m - h])
                val = np.where(J > I, val, np.inf)
                k = val.argmin(axis=1)
                v = val[np.arange(L), k]
                better = v < best * (1 - TIE)
                best = np.where(better, v, best)
                arg[better] = np.stack([k[better], np.full(better.sum(), h)], axis=1)
            A[:L, m] = best
            choice[:L, m] = arg
        if not np.isfinite(A[0, H]):
            raise PlanError(self.node._no_fit_message())
        top, inner, i, m = [], [], 0, H
        while i < L:
            j, h = (int(v) for v in choice[i, m])
            top.append((i, j, h))
            inner.append(self.inner(i, j))
            i, m = j, m - h
        return float(A[0, H]), top, inner

    def to_plan(self, top, inner, t: float, **kw) -> PipelinePlan:
        stages, g0 = [], 0
        for (i, j, h), (bounds, reps) in zip(top, inner):
            a = 0
            for (si, sj), r in zip(bounds, reps):
                ranks = [g * self.n + a + q for q in range(r) for g in range(g0, g0 + h)]
                stages.append(Stage((si, sj), ranks, [self.devices[x] for x in ranks],
                                    float(self.node.stage_time(si, sj, a, r)) / h,
                                    float(self.node.stage_memory(si, sj, a, r))))
                a += r
            g0 += h
        _, ok = self.evaluate(top, inner)
        mb = self.node.profile.batch_size
        extra = {"fits": ok, "settings": self.node.settings.to_dict(),
                 "levels": {"hosts": self.H, "per_host": self.n, "inter_bandwidth": self.inter},
                 "top_stages": [list(x) for x in top]}
        return PipelinePlan(stages, self.L, mb, self.M, "hierarchical",
                            layer_names=[l.name for l in self.node.profile.layers],
                            bottleneck_s=t, predicted_samples_per_s=self.M * mb / t if t > 0 else 0,
                            extra=extra, **kw).validate()


def partition_hierarchical(profile: ModelProfile, topology: Topology, workers: int | None = None,
                           micro_batch: int | None = None, microbatches: int = 4,
                           optimizer_states: int = 1, stash: bool = True,
                           settings: PlannerSettings = UNCALIBRATED,
                           **plan_kw) -> PipelinePlan:
    """The optimal hierarchical plan (see module doc) for `profile` on `topology`."""
    hier = Hierarchy(profile, topology, workers, micro_batch, microbatches, optimizer_states, stash,
                     settings)
    t, top, inner = hier.solve()
    return hier.to_plan(top, inner, t, topology=topology.name, **plan_kw)
