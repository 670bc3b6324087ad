"""Topology-aware placement: which physical device runs each mesh rank of a plan.

    placed = place(model, shape)                  # a PlanModel and a costed Shape
    placed.devices, placed.estimate.step_s, placed.rank_order.step_s, placed.gain

Rank order (rank r on the r-th compute device, hosts in order) suits a mesh whose
innermost, heaviest dim fits a host; it does not when the heavy traffic is elsewhere
(data-parallel gradients larger than tensor-parallel activations), when the device list
interleaves hosts, or when the job takes part of a host. `place` solves it:

1. traffic: per mesh dim, the bytes each rank sends to its ring neighbour per step (tp:
   the layers' collectives; dp: gradient all-reduce or fully_shard's all-gathers and
   reduce-scatters; pp: activations and gradients between consecutive stages), from the
   workload and the shape;
2. hosts (graph partitioning): ranks are assigned to hosts, at most a host's devices each,
   minimising the bytes that cross hosts: exactly, as a MILP (HiGHS through
   scipy.optimize.milp) for up to 64 ranks, else greedily (whole groups of the heaviest dim
   first, largest hosts first);
3. refinement: pairwise swaps of ranks (and of a rank with an unused device) under the
   congestion-aware communication proxy: per dim, its bytes times the most loaded link's
   seconds per byte with every group's ring at once; for large meshes a bounded number
   of rounds over the heaviest pairs;
4. the plan cost model's predicted step time decides among rank order, the partition and
   the refined placement, so the result never predicts worse than rank order.

The result's `devices[r]` is the device of mesh rank r (row-major over pp, dp_replicate,
dp_shard, tp); a plan carries it as its optional `placement` field, and a launcher starts
rank r on that device (`rank_of_device`), or processes started in another order re-join
as the mesh rank of their device (`join_as_placed`) before `weft.parallelize`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from weft.errors import PlanError
from weft.plan.format import Plan
from weft.planner.comm import STEPS
from weft.planner.mesh_groups import mesh_groups
from weft.planner.plan_cost import Estimate, PlanModel
from weft.planner.shape import Shape


@dataclass
class Placed:
    devices: list[str]
    estimate: Estimate
    rank_order: Estimate
    method: str
    seconds: float = 0.0

    @property
    def gain(self) -> float:
        """Predicted speed-up over rank order (>= 1)."""
        return self.rank_order.step_s / self.estimate.step_s if self.estimate.step_s else 1.0


def traffic(model: PlanModel, shape: Shape) -> dict[str, float]:
    """Bytes per step each rank sends to its ring neighbour, per mesh dim."""
    wl, b, M, t = model.workload, shape.micro_batch, shape.microbatches, shape.tp
    out = {"tp": 0.0, "dp_replicate": 0.0, "dp_shard": 0.0, "pp": 0.0}
    if t > 1:
        for l in wl.layers:
            for c in l.collectives:
                out["tp"] += M * b * c.nbytes * STEPS[c.kind] * (t - 1) / t
    stages = shape.bounds or ((0, len(wl)),)
    P = max(sum(wl.layers[k].params.at(t) for k in range(i, j)) for i, j in stages)
    if shape.sharded:
        n = shape.dp_shard if shape.dp_shard > 1 else shape.dp_replicate
        dim = "dp_shard" if shape.dp_shard > 1 else "dp_replicate"
        out[dim] += (2 * M + 1) * P * (n - 1) / n
        if shape.dp_shard > 1 and shape.dp_replicate > 1:
            r = shape.dp_replicate
            out["dp_replicate"] += 2 * (r - 1) / r * P / shape.dp_shard
    elif shape.dp_replicate > 1:
        r = shape.dp_replicate
        out["dp_replicate"] += 2 * (r - 1) / r * P
    if shape.pp > 1:
        out["pp"] = 2 * M * b * max(wl.layers[j - 1].out_bytes for _, j in stages[:-1])
    return out


class _Proxy:
    """Congestion-aware communication time of a placement (see the module doc)."""

    def __init__(self, model: PlanModel, shape: Shape, pool: list[str]):
        self.net, self.pool = model.net, pool
        self.vol = traffic(model, shape)
        ranks = list(range(shape.world))
        g = mesh_groups(shape, ranks)
        self.pairs: dict[str, list[tuple[int, int]]] = {}
        for d, per in g.items():
            if self.vol.get(d, 0.0) <= 0:
                continue
            ps = []
            for stage in per:
                for grp in stage:
                    n = len(grp)
                    if n < 2:
                        continue
                    ps += [(grp[i], grp[(i + 1) % n]) for i in range(n if n > 2 else 1)]
                    if n == 2:
                        ps.append((grp[1], grp[0]))
            self.pairs[d] = ps
        self.of_rank = {r: [(d, k) for d, ps in self.pairs.items() for k, (a, b) in
                            enumerate(ps) if r in (a, b)] for r in ranks}
        self.inv = 1.0 / self.net.cap

    def _route(self, i: int, j: int) -> tuple[int, ...]:
        return self.net.route(self.pool[i], self.pool[j])

    def loads(self, where: list[int]) -> dict[str, np.ndarray]:
        out = {}
        for d, ps in self.pairs.items():
            links = [e for a, b in ps for e in self._route(where[a], where[b])]
            out[d] = np.bincount(np.asarray(links, dtype=np.int64), minlength=len(self.inv)) \
                .astype(float)
        return out

    def cost(self, loads: dict[str, np.ndarray]) -> float:
        return sum(self.vol[d] * float((L * self.inv).max(initial=0.0)) for d, L in loads.items())

    def moved(self, loads, where: list[int], ranks, new_where: list[int]):
        """Loads after ranks `ranks` move from `where` to `new_where` (copies)."""
        out = {d: L.copy() for d, L in loads.items()}
        done = set()
        for r in ranks:
            for d, k in self.of_rank[r]:
                if (d, k) in done:
                    continue
                done.add((d, k))
                a, b = self.pairs[d][k]
                for e in self._route(where[a], where[b]):
                    out[d][e] -= 1
                for e in self._route(new_where[a], new_where[b]):
                    out[d][e] += 1
        return out


def _hosts(pool: list[str], model: PlanModel) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, d in enumerate(pool):
        out.setdefault(model.net.host(d), []).append(i)
    return out


def _partition_milp(weights: dict[tuple[int, int], float], n: int, caps: list[int]):
    """Ranks -> host indices minimising the weight of pairs split across hosts."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    H = len(caps)
    pairs = [p for p, w in weights.items() if w > 0]
    nx_, nz = n * H, len(pairs)
    c = np.concatenate([np.zeros(nx_), [weights[p] for p in pairs]])
    rows, lo, hi = [], [], []
    for i in range(n):  # each rank on one host
        r = np.zeros(nx_ + nz)
        r[i * H:(i + 1) * H] = 1
        rows.append(r), lo.append(1), hi.append(1)
    for h in range(H):  # host capacity
        r = np.zeros(nx_ + nz)
        r[h:nx_:H] = 1
        rows.append(r), lo.append(0), hi.append(caps[h])
    for k, (i, j) in enumerate(pairs):  # z_ij >= x_ih - x_jh and >= x_jh - x_ih
        for h in range(H):
            for a, b in ((i, j), (j, i)):
                r = np.zeros(nx_ + nz)
                r[a * H + h], r[b * H + h], r[nx_ + k] = 1, -1, -1
                rows.append(r), lo.append(-np.inf), hi.append(0)
    integrality = np.concatenate([np.ones(nx_), np.zeros(nz)])
    res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
               bounds=Bounds(0, 1), options={"time_limit": 10.0})
    if res.x is None:
        return None
    x = res.x[:nx_].reshape(n, H)
    return [int(np.argmax(x[i])) for i in range(n)]


def _by_hosts(assign: list[int], hosts: list[list[int]]) -> list[int]:
    free = [list(h) for h in hosts]
    return [free[h].pop(0) for h in assign]


def _greedy_hosts(proxy: _Proxy, n: int, hosts: list[list[int]]) -> list[int]:
    """Whole groups of the heaviest dim first, each onto the host with most room."""
    order = sorted(proxy.pairs, key=lambda d: -proxy.vol[d])
    free = sorted((list(h) for h in hosts), key=len, reverse=True)
    where: dict[int, int] = {}
    for d in order:
        chain = []
        for a, b in proxy.pairs[d]:
            for r in (a, b):
                if r not in chain:
                    chain.append(r)
        for r in chain:
            if r in where:
                continue
            free.sort(key=len, reverse=True)
            where[r] = free[0].pop(0)
    for r in range(n):
        if r not in where:
            free.sort(key=len, reverse=True)
            where[r] = free[0].pop(0)
    return [where[r] for r in range(n)]


def _refine(proxy: _Proxy, where: list[int], pool_size: int, budget_s: float) -> list[int]:
    where = list(where)
    loads = proxy.loads(where)
    cost = proxy.cost(loads)
    n = len(where)
    deadline = time.perf_counter() + budget_s
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        unused = [d for d in range(pool_size) if d not in set(where)]
        for i in range(n):
            for j in list(range(i + 1, n)) + [-1 - k for k in range(len(unused))]:
                new = list(where)
                if j >= 0:
                    new[i], new[j] = where[j], where[i]
                    moved = (i, j)
                else:
                    new[i] = unused[-1 - j]
                    moved = (i,)
                nl = proxy.moved(loads, where, moved, new)
                c = proxy.cost(nl)
                if c < cost * (1 - 1e-9):
                    where, loads, cost, improved = new, nl, c, True
                    unused = [d for d in range(pool_size) if d not in set(where)]
                    break
            if time.perf_counter() > deadline:
                break
    return where


def place(model: PlanModel, shape: Shape, pool: list[str] | None = None,
          budget_s: float = 5.0, exact_limit: int = 64) -> Placed:
    """The placement of `shape` on `model`'s topology (see the module doc)."""
    t0 = time.perf_counter()
    pool = list(pool) if pool is not None else model.rank_order(len(model.devices or
                                                                 model.net.compute_devices))
    n = shape.world
    if n > len(pool):
        raise PlanError(f"the plan has {n} ranks but only {len(pool)} devices are available")
    base = model.estimate(shape)
    shape = base.shape  # with the stages' split fixed
    ranked = model.estimate(shape, pool[:n])
    proxy = _Proxy(model, shape, pool)
    hosts = list(_hosts(pool, model).values())
    tried = {"rank order": list(range(n))}
    weights: dict[tuple[int, int], float] = {}
    for d, ps in proxy.pairs.items():
        for a, b in ps:
            key = (min(a, b), max(a, b))
            weights[key] = weights.get(key, 0.0) + proxy.vol[d]
    if len(hosts) > 1:
        assign = _partition_milp(weights, n, [len(h) for h in hosts]) if n <= exact_limit \
            else None
        if assign is not None:
            tried["host partition (MILP)"] = _by_hosts(assign, hosts)
        else:
            tried["host partition (greedy)"] = _greedy_hosts(proxy, n, hosts)
    start = min(tried.values(), key=lambda w: proxy.cost(proxy.loads(w)))
    tried["refined"] = _refine(proxy, start, len(pool), budget_s)
    best_name, best = "rank order", ranked
    for name, where in tried.items():
        if name == "rank order":
            continue
        est = model.estimate(shape, [pool[i] for i in where])
        if est.step_s < best.step_s * (1 - 1e-9):
            best_name, best = name, est
    return Placed(best.placement, best, ranked, best_name, time.perf_counter() - t0)


def rank_of_device(plan: Plan, device: str) -> int:
    """The mesh rank a process on `device` takes under `plan.placement` (for launchers)."""
    if not plan.placement:
        raise PlanError("plan has no placement; ranks follow the launcher's order")
    try:
        return list(plan.placement).index(device)
    except ValueError:
        raise PlanError(f"placement: device {device!r} is not in the plan's placement "
                        f"{list(plan.placement)[:8]}...") from None


def join_as_placed(placement, device: str, master: str, port: int, world: int,
                   is_store: bool, timeout_s: float = 300.0) -> int:
    """For a launcher that started processes in its own order: leave the current process
    group and join a fresh one as the mesh rank whose device is `device`, so mesh rank r
    runs on placement[r]. `master`:`port` is a TCP store hosted by the process with
    `is_store` (exactly one). Returns the new rank."""
    import datetime

    import torch.distributed as dist

    order = list(placement)
    if device not in order:
        raise PlanError(f"placement: device {device!r} is not in {order[:8]}...")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    rank = order.index(device)
    store = dist.TCPStore(master, port, world, is_master=is_store,
                          timeout=datetime.timedelta(seconds=timeout_s))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return rank
