"""Collectives measured per operation and group size, fitted as a latency plus a cost per
byte: the planner's collective times for the ranks that were measured.

    fits = measure_collectives(world=4)                  # local gloo ranks, ~10 s
    model = PlanModel(workload, topology, Costs(collective_fits=fits.table))
    fits.seconds("allreduce", 2, 64 << 10)               # two groups of 2 at once

`weft.collectives`' ring model (`CostParams` fitted by `weft.collectives.costmodel.fit`)
charges a collective per message and per byte of a ring on the group. On local gloo ranks
that share a few cores that misses most of a small collective's time: waking the ranks of
a blocking call costs about the same whether the group holds 2 or 4 ranks and whether it
moves 4 KiB or 1 MiB (docs/planner.md, 2026-12-02: every collective of 4 KiB - 1 MiB on 4
ranks sharing 2 cores took 1.6-9 ms; the ring fitted on 4-rank groups predicted 0.5-1.6 ms
for groups of 2). So the collectives a plan issues are measured as the plans run them:

* each kind (all-reduce, all-gather and reduce-scatter of flat tensors: the calls weft's
  DataParallel and fully_shard make) on every group size `n` that divides the world,
  with the world's ``world / n`` groups of consecutive ranks running at once (as every
  group of one mesh dimension does), at sizes from 4 KiB to 4 MiB (the whole tensor, as
  `weft.planner.comm.Comm.collective` counts it);
* the same three as tensor parallelism issues them (`DTENSOR_KINDS`, "dtensor_" + kind):
  a DTensor on the group's mesh redistributed from Partial to Replicate, Shard to
  Replicate and Partial to Shard, and waited for. DTensor runs the same gloo collective
  through torch's functional collectives (a copy of the input, an asynchronous work
  object and its wait): on 4 ranks sharing 2 cores (2026-12-03, after 2-2.6 ms of
  compute) its all-reduce fitted 1.2-3.5 ms more per call than `dist.all_reduce` at the
  tensor-parallel plans' sizes (256 KiB on pairs, 512 KiB on 4 ranks) in 6 of 7
  calibrations and 0.4-0.7 ms in the seventh: about the under-prediction of those
  plans (docs/planner.md);
* each timing is the slowest rank's seconds (a barrier before, the max over ranks after),
  the median over `repeats` interleaved rounds, as `weft.planner.measure` times a step;
* with ``after`` (seconds), every rank computes that long (a matmul loop timed alone)
  right before each collective and the round's median of the compute alone is taken off:
  a step issues its collectives right after compute, when ranks that share cores arrive
  at different times and must be woken while others compute (on 4 ranks sharing 2 cores,
  2026-12-02: fitted latencies 1-3 ms above those right after a barrier);
* per (kind, n) the line ``seconds = latency + nbytes * per_byte`` with both terms
  non-negative, by least squares on the relative error (every size weighs alike).

`Comm` uses a fit in place of its ring model for a group of the fitted size (so only for
the machine and the backend measured), and the ring model elsewhere.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from weft.errors import PlanError

KINDS = ("allreduce", "all_gather", "reduce_scatter")
# the same collectives as a DTensor redistribution issues them (tensor parallelism):
# kind -> (placement before, after)
DTENSOR_KINDS = {"dtensor_allreduce": ("partial", "replicate"),
                 "dtensor_all_gather": ("shard", "replicate"),
                 "dtensor_reduce_scatter": ("partial", "shard")}
SIZES = tuple(4096 << k for k in range(11))  # 4 KiB .. 4 MiB


@dataclass(frozen=True)
class CollectiveFits:
    """Fitted lines per (kind, group size): `table` rows (kind, n, latency_s, per_byte_s);
    `samples` rows (kind, n, nbytes, measured seconds); `error` the mean relative error."""

    table: tuple[tuple[str, int, float, float], ...]
    samples: tuple[tuple[str, int, int, float], ...] = ()
    error: float = 0.0

    def seconds(self, kind: str, n: int, nbytes: float) -> float:
        return fitted_seconds(self.table, kind, n, nbytes)

    def summary(self) -> str:
        rows = ", ".join(f"{k} n={n}: {a * 1e3:.2f} ms + {b * 1e9:.2f} ns/B"
                         for k, n, a, b in self.table)
        return f"collectives fitted per kind and group size (mean error {self.error:.0%}): {rows}"


def fitted_seconds(table, kind: str, n: int, nbytes: float) -> float | None:
    """The fitted seconds of `kind` on groups of `n` for `nbytes`, None if not fitted."""
    for k, m, a, b in table:
        if k == kind and m == n:
            return a + b * nbytes
    return None


def fit_lines(samples) -> tuple[tuple[tuple[str, int, float, float], ...], float]:
    """(table, mean relative error) of non-negative lines fitted to `samples` rows
    (kind, n, nbytes, seconds) per (kind, n), least squares on the relative error."""
    from scipy.optimize import nnls

    groups: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for kind, n, nbytes, t in samples:
        if t <= 0 or nbytes <= 0:
            raise PlanError(f"collective sample {kind} n={n} {nbytes} B: {t} s is not a "
                            f"positive time of a positive size")
        groups.setdefault((kind, int(n)), []).append((float(nbytes), float(t)))
    table, errs = [], []
    for (kind, n), rows in sorted(groups.items()):
        x = np.array([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        A = np.stack([np.ones_like(x), x], axis=1) / y[:, None]
        (a, b), _ = nnls(A, np.ones_like(y))
        table.append((kind, n, float(a), float(b)))
        errs += list(np.abs((a + b * x) / y - 1))
    return tuple(table), float(np.mean(errs)) if errs else 0.0


def _compute_segment(seconds: float):
    """A function computing for about `seconds` on one rank alone (a matmul loop whose
    length rank 0 times while the others wait), the same work on every rank."""
    import torch
    import torch.distributed as dist

    a, b = torch.ones(96, 96) / 96, torch.ones(96, 96) / 96

    def loop(k):
        x = a
        for _ in range(k):
            x = torch.tanh(x @ b)
    n = torch.zeros(1, dtype=torch.int64)
    if dist.get_rank() == 0:
        loop(50)
        t0 = time.perf_counter()
        loop(200)
        n[0] = max(1, int(seconds / ((time.perf_counter() - t0) / 200)))
    dist.broadcast(n, 0)
    return lambda: loop(int(n))


def collectives_rank(sizes, repeats: int, after: float = 0.0, dtensor: bool = True) -> dict:
    """In every rank: {(kind, n, nbytes): median slowest-rank seconds}; with `after`, of
    each collective issued right after about `after` seconds (alone) of compute on every
    rank, less that compute alone (the round's median of `slowest_seconds` of it)."""
    import torch
    import torch.distributed as dist

    from weft.planner.measure import slowest_seconds

    world = dist.get_world_size()
    seg = _compute_segment(after) if after > 0 else None
    groups, meshes = {}, {}
    for n in range(2, world + 1):
        if world % n == 0:  # this rank's group of n consecutive ranks (the world: default)
            meshes[n] = _mesh(world, n)
            groups[n] = meshes[n].get_group() if n < world else None

    def op(kind, n, nbytes, g):
        full = torch.ones(max(n, int(nbytes) // 4 // n * n))
        part = torch.ones(full.numel() // n)
        if kind == "allreduce":
            return lambda: dist.all_reduce(full, group=g)
        if kind == "all_gather":
            return lambda: dist.all_gather_single(full, part, group=g)
        return lambda: dist.reduce_scatter_single(part, full, group=g)
    fns = {(k, n, s): op(k, n, s, g) for n, g in groups.items() for s in sizes for k in KINDS}
    if dtensor:
        fns.update({(k, n, s): _dtensor_op(k, n, s, m) for n, m in meshes.items()
                    for s in sizes for k in DTENSOR_KINDS})
    if seg is not None:
        fns = {key: (lambda fn=fn: (seg(), fn())) for key, fn in fns.items()}
    ts: dict = {key: [] for key in fns}
    for r in range(repeats + 1):  # interleaved rounds, the first a warm-up
        base = statistics.median(slowest_seconds(seg) for _ in range(7)) if seg else 0.0
        for key, fn in (fns.items() if r % 2 == 0 else reversed(fns.items())):
            t = slowest_seconds(fn)
            if r:
                ts[key].append(t - base)
    return {key: max(statistics.median(v), 1e-6) for key, v in ts.items()}


def _mesh(world: int, n: int):
    """A DeviceMesh of this rank's group of `n` consecutive ranks (all ranks call it)."""
    from torch.distributed.device_mesh import init_device_mesh

    if n == world:
        return init_device_mesh("cpu", (world,))
    return init_device_mesh("cpu", (world // n, n), mesh_dim_names=("rest", "group"))["group"]


def _dtensor_op(kind: str, n: int, nbytes: int, mesh):
    """A DTensor of `nbytes` in all redistributed as `kind` says (`DTENSOR_KINDS`),
    waited for: what a tensor-parallel module's hooks and DTensor's ops issue."""
    import torch
    from torch.distributed._functional_collectives import AsyncCollectiveTensor
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    make = {"partial": Partial, "replicate": Replicate, "shard": lambda: Shard(0)}
    src, dst = DTENSOR_KINDS[kind]
    numel = max(n, int(nbytes) // 4 // n * n)
    local = torch.ones(numel // n if src == "shard" else numel)
    d = DTensor.from_local(local, mesh, [make[src]()], run_check=False)

    def run():
        y = d.redistribute(mesh, [make[dst]()]).to_local()
        return y.wait() if isinstance(y, AsyncCollectiveTensor) else y
    return run


def measure_collectives(world: int = 2, sizes=SIZES, repeats: int = 5, after: float = 0.0,
                        timeout: float = 300.0, dtensor: bool = True) -> CollectiveFits:
    """Measure and fit the collectives of the module doc on `world` local gloo ranks
    (`after`: each right after that many seconds of compute, see `collectives_rank`;
    `dtensor`: DTensor's kinds too)."""
    from weft.launch import launch

    if world < 2:
        raise PlanError(f"collectives are measured on at least 2 ranks, got {world}")
    if not sizes or min(sizes) <= 0:
        raise PlanError(f"collective sizes must be positive byte counts, got {sizes!r}")
    got = launch(collectives_rank, world, args=(tuple(sizes), repeats, after, dtensor),
                 timeout=timeout)[0]
    samples = tuple((k, n, s, t) for (k, n, s), t in sorted(got.items()))
    table, err = fit_lines(samples)
    return CollectiveFits(table, samples, err)
