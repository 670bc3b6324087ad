"""Search plans: mesh shape, micro-batches, schedule, checkpointing, data-parallel flavour.

    found = search(workload, topology, devices=64, global_batch=512, memory=80 * 2**30)
    found.best.shape, found.best.step_s, found.top[:5]

Candidates: every (pp, dp_replicate, dp_shard, tp) whose product is the device count,
tp among the degrees the tensor-parallel rules allow, at most one pipeline stage per
layer; micro-batches M = 1, 2, 4 (gradient accumulation) without a pipeline, else
pp, 2 pp, 4 pp, 8 pp (interleaved: multiples of pp as well); schedule 1F1B (GPipe takes
the same time in this model and holds all M micro-batches' activations, so it is only
searched when asked for) and interleaved 1F1B with 2 stages per rank when allowed; activation checkpointing of the blocks
off or on; data parallelism by weft's DataParallel (dp_shard 1) or fully_shard (dp_shard
> 1, HSDP with dp_replicate). Pruned before any costing: micro-batches that do not divide
the batch, and meshes whose memory cannot fit even with the model spread evenly over the
pipeline. Each remaining candidate has a lower bound on its step time (its compute and
its tensor-parallel collectives, each on one group alone, spread perfectly over the
pipeline ranks; no other communication, no bubble); candidates are costed in
the order of their bounds (`PlanModel.estimate`, which solves the pipeline split with the
PipeDream partitioner) and the search stops once the next bound exceeds the k-th best
time found: the top k are those of the exhaustive search under the same model
(`exhaustive`, which the tests compare against).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from weft.errors import PlanError
from weft.planner.memory import plan_memory
from weft.planner.plan_cost import Estimate, PlanModel
from weft.planner.shape import Shape, block_layers
from weft.planner.workload import Workload


@dataclass(frozen=True)
class Space:
    """What the search may choose."""

    schedules: tuple[str, ...] = ("1f1b",)  # GPipe: the same time in this model, more memory
    interleaved: bool = False
    checkpoint: tuple[bool, ...] = (False, True)
    microbatch_factors: tuple[int, ...] = (1, 2, 4, 8)
    accumulation: tuple[int, ...] = (1, 2, 4)
    max_tp: int | None = None  # default: the largest host's device count
    communicator: str = "torch"  # of weft's DataParallel: torch, or weft (topology-aware)
    runnable: object = None  # shape -> reason it cannot run (str) or None


@dataclass
class Found:
    top: list[Estimate]
    evaluated: int
    candidates: int
    pruned_memory: int
    rejected: dict = field(default_factory=dict)  # reason -> count
    seconds: float = 0.0

    @property
    def best(self) -> Estimate:
        if not self.top and not self.candidates:
            raise PlanError("no candidate plan: no mesh of these devices runs this global batch "
                            "(the data-parallel degree must divide the batch, a pipeline needs "
                            "at least one micro-batch per stage and tp at most one host's "
                            "devices); raise the batch (--batch) or use fewer devices")
        if not self.top:
            why = ", ".join(f"{n} {r}" for r, n in sorted(self.rejected.items()))
            raise PlanError(f"no plan fits: of {self.candidates} candidates, "
                            f"{self.pruned_memory} need more memory than allowed even spread "
                            f"evenly, the rest were rejected ({why or 'none'})")
        return self.top[0]


def _factorizations(n: int):
    for pp in range(1, n + 1):
        if n % pp:
            continue
        for dr in range(1, n // pp + 1):
            if (n // pp) % dr:
                continue
            for ds in range(1, n // pp // dr + 1):
                if (n // pp // dr) % ds:
                    continue
                yield pp, dr, ds, n // pp // dr // ds


def candidates(workload: Workload, devices: int, global_batch: int, space: Space,
               max_tp: int) -> list[Shape]:
    blocks = block_layers(workload)
    L = len(workload)
    comm = space.communicator  # weft's serves weft's DataParallel only (dp_replicate)
    out = []
    for pp, dr, ds, tp in _factorizations(devices):
        if tp not in workload.tp_degrees or tp > max_tp:
            continue
        dp = dr * ds
        if global_batch % dp:
            continue
        per = global_batch // dp
        flavour = "none" if dp == 1 else ("fsdp" if ds > 1 else "weft")
        if pp == 1:
            layouts = [("1f1b", 1, m) for m in space.accumulation]
        else:
            layouts = [(s, 1, f * pp) for s in space.schedules for f in space.microbatch_factors]
            if space.interleaved:
                layouts += [("interleaved", 2, f * pp) for f in space.microbatch_factors]
        for sched, v, m in layouts:
            if per % m or pp * v > L:
                continue
            for ck in space.checkpoint:
                if ck and not blocks:
                    continue
                out.append(Shape(pp, dr, ds, tp, global_batch, m, sched, v,
                                 checkpoint=blocks if ck else (), flavour=flavour,
                                 communicator=comm if flavour == "weft" else "torch"))
    return out


def lower_bound(model: PlanModel, shape: Shape, memo: dict | None = None) -> float:
    """Step time if the compute and the tensor-parallel collectives (each on one tp group
    alone, no link shared) were spread perfectly over the pipeline ranks."""
    key = (shape.tp, shape.micro_batch, shape.checkpoint)
    per_mb = memo.get(key) if memo is not None else None
    if per_mb is None:
        wl, b, t = model.workload, shape.micro_batch, shape.tp
        k = model.costs.compute_scale
        ck = set(shape.checkpoint)
        per_mb = sum(l.compute_s(b, t) + (b * l.forward.at(t) if i in ck else 0.0)
                     for i, l in enumerate(wl.layers)) * k
        if t > 1:
            comm = model.comm("torch")  # DTensor's collectives
            group = model.rank_order(t)
            for i, l in enumerate(wl.layers):
                for c in l.collectives:
                    one = comm.one(c.kind, group, c.nbytes * b)[0]
                    per_mb += one * (2 if c.phase == "forward" and i in ck else 1)
        if memo is not None:
            memo[key] = per_mb
    return shape.microbatches * per_mb / shape.pp + model.costs.step_overhead_s


def memory_floor(shape: Shape, workload: Workload) -> float:
    """Bytes per rank with the model and activations spread evenly over the pipeline."""
    even = Shape(1, shape.dp_replicate, shape.dp_shard, shape.tp, shape.global_batch,
                 shape.microbatches, "1f1b", 1, ((0, len(workload)),), shape.checkpoint,
                 shape.flavour, shape.mixed, shape.optimizer_states, shape.bucket_mb)
    return plan_memory(even, workload)[0] / shape.pp


def _feasible(est: Estimate, memory: float | None) -> bool:
    return memory is None or est.peak_bytes <= memory


def _max_tp(model: PlanModel, space: Space) -> int:
    if space.max_tp is not None:
        return space.max_tp
    return max(len(v) for v in model.net.topology.hosts().values())


def search(workload: Workload, model: PlanModel, devices: int, global_batch: int,
           memory: float | None = None, space: Space = Space(), top: int = 10) -> Found:
    """The `top` best plans (see the module doc)."""
    t0 = time.perf_counter()
    cands = candidates(workload, devices, global_batch, space, _max_tp(model, space))
    rejected: dict[str, int] = {}
    kept, pruned = [], 0
    memo: dict = {}
    for c in cands:
        if memory is not None and memory_floor(c, workload) > memory:
            pruned += 1
            continue
        why = space.runnable(c) if space.runnable else None
        if why:
            rejected[why] = rejected.get(why, 0) + 1
            continue
        kept.append((lower_bound(model, c, memo), c.label(), c))
    kept.sort(key=lambda x: (x[0], x[1]))
    best: list[Estimate] = []
    evaluated = 0
    for bound, _, c in kept:
        if len(best) >= top and bound > best[-1].step_s:
            break
        est = model.estimate(c)
        evaluated += 1
        if not _feasible(est, memory):
            rejected["memory"] = rejected.get("memory", 0) + 1
            continue
        best.append(est)
        best.sort(key=_order)
        del best[top:]
    return Found(best, evaluated, len(cands), pruned, rejected, time.perf_counter() - t0)


def exhaustive(workload: Workload, model: PlanModel, devices: int, global_batch: int,
               memory: float | None = None, space: Space = Space(), top: int = 10) -> Found:
    """Every candidate costed, no pruning beyond feasibility (for tests and checks)."""
    cands = candidates(workload, devices, global_batch, space, _max_tp(model, space))
    out, rejected = [], {}
    for c in cands:
        why = space.runnable(c) if space.runnable else None
        if why:
            rejected[why] = rejected.get(why, 0) + 1
            continue
        est = model.estimate(c)
        if _feasible(est, memory):
            out.append(est)
    out.sort(key=_order)
    return Found(out[:top], len(cands), len(cands), 0, rejected)


def _order(e: Estimate):
    return (round(e.step_s, 12), e.peak_bytes, e.shape.label())


__all__ = [
    "Found",
    "Space",
    "candidates",
    "exhaustive",
    "itertools",
    "lower_bound",
    "memory_floor",
    "search",
]
