"""Round-based mechanism: turn an allocation X into concrete accelerator leases each round.

Each schedulable unit (a job, or a pair of jobs sharing accelerators) has an
allocation row over types. Per type, units are ranked by
``priority = X[u, j] / (share of time u has received on j so far)``
(infinite when it has received none), and chosen greedily while their scale
factor fits in what is left; a job appears in at most one chosen unit. Idle
accelerators are then offered to remaining runnable units (work conserving).

``type_blind=True`` (for heterogeneity-agnostic policies) ranks all (unit, type)
pairs in one queue by the same priority, so each job follows its allocation's
split over types however idle the cluster is; ties between types (every unit
starts at infinite priority everywhere) go to a type order shuffled every round
with ``seed``. Walking the types in a fixed order instead would hand an idle
cluster's agnostic jobs the first type (V100) every round, a baseline that
quietly knows which type is fastest.
Placement keeps a job on the accelerators it held last round when possible
(lease extension) and packs multi-accelerator jobs on as few servers as possible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weft.cluster.model import Cluster

Unit = int | tuple  # a job id, or (job id, job id) for a space-shared pair


@dataclass
class Lease:
    accel_type: str
    workers: tuple[int, ...]       # global worker ids
    servers: tuple[int, ...]       # server id of each worker


class RoundMechanism:
    def __init__(self, cluster: Cluster, round_seconds: float = 360.0, work_conserving: bool = True,
                 type_blind: bool = False, seed: int = 0):
        self.cluster, self.round_seconds = cluster, float(round_seconds)
        self.work_conserving = work_conserving
        self.type_blind = type_blind
        self.rng = np.random.default_rng(seed)
        self.types = cluster.types
        # Workers of type j live on servers of per_server[j] slots; global ids.
        self.server_of: dict[str, np.ndarray] = {}
        self.worker_ids: dict[str, np.ndarray] = {}
        wid, sid = 0, 0
        for t in self.types:
            c, per = cluster.counts[t], cluster.per_server[t]
            self.worker_ids[t] = np.arange(wid, wid + c)
            self.server_of[t] = sid + np.arange(c) // per
            wid += c
            sid += (c + per - 1) // per
        self.received: dict[Unit, np.ndarray] = {}   # seconds on each type
        self.first_seen: dict[Unit, float] = {}
        self.last: dict[int, Lease] = {}              # job id -> lease of last round

    def forget(self, job_id: int) -> None:
        self.last.pop(job_id, None)
        for u in [u for u in self.received if u == job_id or (isinstance(u, tuple) and job_id in u)]:
            del self.received[u]
            del self.first_seen[u]

    @staticmethod
    def members(u: Unit) -> tuple:
        return u if isinstance(u, tuple) else (u,)

    def schedule_round(self, now: float, units: list[Unit], alloc: np.ndarray, scale: np.ndarray,
                       runnable: np.ndarray, holding: dict[int, Lease] | None = None) -> dict[Unit, Lease]:
        """Choose the leases for the round starting at ``now``.

        ``alloc[u, j]`` is unit u's allocation on type j, ``scale[u]`` its
        accelerators, ``runnable[u, j]`` whether it can run on j at all.
        ``holding`` (job id -> lease) is where jobs actually run when that differs
        from last round's leases (the executor's jobs keep their slots until they
        stop); lease extension keeps them there.
        """
        if holding is not None:
            self.last = dict(holding)
        U, k = alloc.shape
        for u in units:
            if u not in self.received:
                self.received[u] = np.zeros(k)
                self.first_seen[u] = now
        rec = np.array([self.received[u] for u in units]).reshape(U, k)
        age = np.array([max(now - self.first_seen[u], 0.0) for u in units]) + self.round_seconds
        share = rec / age[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            prio = np.where(share > 0, alloc / share, np.where(alloc > 1e-9, np.inf, 0.0))
        busy: set[int] = set()
        chosen: dict[Unit, int] = {}
        free = [self.cluster.counts[t] for t in self.types]
        walk = list(range(k))
        if self.type_blind:
            walk = [int(j) for j in self.rng.permutation(k)]
            self._pick_global(prio, alloc, walk, free, units, scale, busy, chosen)
        else:
            for j in walk:
                order = np.lexsort((-alloc[:, j], -prio[:, j]))
                free[j] = self._pick(order, j, free[j], units, scale, busy, chosen, alloc[:, j] > 1e-9)
        if self.work_conserving:
            order = np.argsort(-(alloc - share).sum(axis=1), kind="stable")
            for j in walk:
                if free[j] > 0:
                    free[j] = self._pick(order, j, free[j], units, scale, busy, chosen, runnable[:, j])
        leases = self._place(chosen, units, scale)
        for u, j in chosen.items():
            self.received[u][j] += self.round_seconds
        self.last = {m: lease for u, lease in leases.items() for m in self.members(u)}
        return leases

    def _pick_global(self, prio, alloc, walk, free, units, scale, busy, chosen) -> None:
        """One queue over all (unit, type) pairs with a positive allocation."""
        rank = np.empty(len(walk), int)
        rank[walk] = np.arange(len(walk))
        ui, tj = np.nonzero(alloc > 1e-9)
        for q in np.lexsort((rank[tj], -alloc[ui, tj], -prio[ui, tj])):
            i, j = int(ui[q]), int(tj[q])
            u = units[i]
            mem = self.members(u)
            if u in chosen or any(m in busy for m in mem) or scale[i] > free[j]:
                continue
            chosen[u] = j
            busy.update(mem)
            free[j] -= int(scale[i])

    def _pick(self, order, j, free, units, scale, busy, chosen, eligible) -> int:
        for i in order:
            if free <= 0:
                break
            if not eligible[i]:
                continue
            u = units[i]
            mem = self.members(u)
            if u in chosen or any(m in busy for m in mem) or scale[i] > free:
                continue
            chosen[u] = j
            busy.update(mem)
            free -= int(scale[i])
        return free

    def _place(self, chosen: dict, units: list, scale: np.ndarray) -> dict[Unit, Lease]:
        idx = {u: i for i, u in enumerate(units)}
        leases: dict[Unit, Lease] = {}
        for j, t in enumerate(self.types):
            mine = [u for u, jj in chosen.items() if jj == j]
            if not mine:
                continue
            ids, srv = self.worker_ids[t], self.server_of[t]
            local_srv = srv - srv[0]
            taken = np.zeros(len(ids), bool)
            free = np.bincount(local_srv).astype(int)
            rest = []
            for u in mine:   # lease extension: same workers as last round when free
                prev = [self.last.get(m) for m in self.members(u)]
                prev = [p for p in prev if p and p.accel_type == t and len(p.workers) == scale[idx[u]]]
                if prev:
                    local = np.asarray(prev[0].workers) - ids[0]
                    if not taken[local].any():
                        taken[local] = True
                        np.subtract.at(free, local_srv[local], 1)
                        leases[u] = Lease(t, tuple(int(w) for w in ids[local]), tuple(int(s) for s in srv[local]))
                        continue
                rest.append(u)
            for u in sorted(rest, key=lambda u: -scale[idx[u]]):
                local = self._pack(int(scale[idx[u]]), taken, local_srv, free)
                taken[local] = True
                np.subtract.at(free, local_srv[local], 1)
                leases[u] = Lease(t, tuple(int(w) for w in ids[local]), tuple(int(s) for s in srv[local]))
        return leases

    @staticmethod
    def _pack(need: int, taken: np.ndarray, srv: np.ndarray, free: np.ndarray) -> np.ndarray:
        """Free slots on as few servers as possible: the fullest server that fits
        all of them, else the emptiest servers first."""
        fits = np.flatnonzero(free >= need)
        if len(fits):
            servers = [fits[np.argmin(free[fits])]]
        else:
            servers = np.argsort(-free, kind="stable")
        out: list[int] = []
        for s in servers:
            slots = np.flatnonzero((srv == s) & ~taken)
            out.extend(slots[: need - len(out)].tolist())
            if len(out) == need:
                break
        return np.array(out, int)
