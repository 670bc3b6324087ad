"""The pipeline runtime's own cost, measured: per schedule action, per step, per message.

    cal = calibrate([[0], [1]], microbatches=8, topology=topo,
                    settings=PlannerSettings(cpu_copy_bw=bw))  # on every rank
    s = cal.settings  # bw, with action_overhead_s, step_overhead_s, latency_s, allreduce_bw
    partition(prof, topo, ..., settings=s)
    predict(plan, prof, topo, "1f1b",
            settings=s.replace(step_overhead_s=s.step_overhead_s + optimizer_step_s))

The profile times layers; the executor also spends CPU time on every action of
its schedule (Python dispatch, posting a receive, `isend`, the loss on the last
stage, bookkeeping) and once per step (splitting the batch, the optimizer call),
and a message takes longer to arrive through `isend`/`irecv` and gloo's threads
than the blocking ping-pong that measured the link says. These costs show when
every rank is on the critical path (a balanced plan), not when one rank idles.

`calibrate` runs the real `Pipeline` (recording its events) on a trivial model
(one scalar-weight layer per chunk, micro-batches of ``micro_batch x 1``
floats) with the same stage ranks, schedule and micro-batch count M, and with
2M. On each rank and step, the CPU overhead is the step's wall time minus the
time blocked waiting for receives minus the trivial layers' profiled compute
(`profile_model` on the trivial model, what `predict` charges for F and B).
`fit_line` fits ``overhead = o * actions + c`` through the (actions of the
rank, overhead) points of both runs: ``o`` per action, ``c`` per step. Then
`fit_latency` finds the one-way message latency that makes `predict` (with
``o`` and ``c``, the profiled compute and the link bandwidth) reproduce the
measured step time with M micro-batches; the 2M run is predicted as a check.
`allreduce_bw` times the runtime's gradient sync (concatenate, all-reduce over
all ranks, copy back) on ``allreduce_bytes`` of float32 and reports the ring
bytes per second, ``2 (W-1)/W * bytes / time``, which the partitioner and
`predict` use for replicated stages instead of the link and copy terms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from weft.errors import PlanError
from weft.parallel.pipeline.runtime import Pipeline
from weft.parallel.pipeline.schedule import build_schedule
from weft.parallel.pipeline.stages import PipelinePlan, Stage
from weft.planner.predict import predict
from weft.planner.profile import profile_model
from weft.planner.settings import UNCALIBRATED, PlannerSettings
from weft.tensors import flatten

FLUSH = ("gpipe", "1f1b", "interleaved")


class Scale(nn.Module):
    """x * w with one scalar weight: a layer with (almost) no compute."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.w


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(o, c) >= 0 of the least-squares line ``y = o * x + c`` through (x, y) points.

    A negative intercept is set to 0 (o refitted through the origin); a negative slope
    to 0 (c = mean y)."""
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    if len(points) < 2 or np.ptp(xs) == 0:
        raise PlanError("fit_line needs points at two or more different x")
    o, c = np.polyfit(xs, ys, 1)
    if c < 0:
        o, c = float(xs @ ys / (xs @ xs)), 0.0
    if o < 0:
        o, c = 0.0, float(ys.mean())
    return max(float(o), 0.0), max(float(c), 0.0)


def fit_latency(step_of: Callable[[float], float], measured: float,
                tol: float = 1e-12) -> float:
    """The latency >= 0 with ``step_of(latency) == measured`` (`step_of` non-decreasing),
    by bisection; 0 when even a zero latency predicts at least `measured`."""
    if step_of(0.0) >= measured:
        return 0.0
    lo, hi = 0.0, max(measured, 1e-9)
    while step_of(hi) < measured:
        hi *= 2
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if step_of(mid) < measured else (lo, mid)
    return (lo + hi) / 2


def cpu_overhead(step_s: float, events: list[tuple], compute_s: float) -> float:
    """A rank's runtime overhead in one step: wall time minus time blocked on receives
    (its 'wait' events) minus the compute the model charges (`compute_s`)."""
    return step_s - sum(e[5] - e[4] for e in events if e[1] == "wait") - compute_s


def trivial_plan(stage_ranks: list[list[int]], micro_batch: int, microbatches: int,
                 chunks_per_stage: int = 1):
    """The calibration's plan: one trivial layer per chunk on `stage_ranks`."""
    S, v = len(stage_ranks), chunks_per_stage
    if v == 1:
        stages = [Stage((s, s + 1), list(r)) for s, r in enumerate(stage_ranks)]
    else:  # interleaved: the runtime recomputes S*v equal chunks from the layer count
        stages = [Stage((s * v, (s + 1) * v), list(r)) for s, r in enumerate(stage_ranks)]
    return PipelinePlan(stages, S * v, micro_batch, microbatches, "calibration").validate()


def _run_steps(pipe, x, y, steps: int, reps: int) -> tuple[float, list[tuple]]:
    """(best mean step seconds over `reps`, slowest rank's; this rank's (step_s, events)
    for every step)."""
    import torch.distributed as dist

    best, per_step = float("inf"), []
    pipe.record = True
    for _ in range(reps):
        dist.barrier()
        total = 0.0
        for _ in range(steps):
            pipe.events = []
            t0 = time.perf_counter()
            pipe.step(x, y)
            dt = time.perf_counter() - t0
            total += dt
            per_step.append((dt, pipe.events))
        dist.barrier()
        t = torch.tensor([total / steps], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        best = min(best, float(t))
    pipe.record = False
    return best, per_step


def allreduce_bw(nbytes: int = 4 * 2**20, reps: int = 10) -> float:
    """Ring bytes/s of the runtime's gradient all-reduce over all ranks (call on every rank;
    median of `reps` after a warm-up, the slowest rank's)."""
    import torch.distributed as dist

    from weft.collectives.communicator import TorchCommunicator

    W = dist.get_world_size()
    if W < 2:
        return float("inf")
    comm, parts = TorchCommunicator(), [torch.ones(nbytes // 8), torch.ones(nbytes // 8)]
    times = []
    for k in range(reps + 1):
        dist.barrier()
        t0 = time.perf_counter()
        flat = flatten(parts)  # as Pipeline._sync_grads
        comm.all_reduce(flat, op="sum")
        parts = [flat[:nbytes // 8].clone(), flat[nbytes // 8:].clone()]
        if k:
            times.append(time.perf_counter() - t0)
    t = torch.tensor([float(np.median(times))], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return 2 * (W - 1) / W * (nbytes // 8) * 2 * 4 / float(t)


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` measured. `settings`: the given settings with ``action_overhead_s``,
    ``step_overhead_s``, ``latency_s`` and ``allreduce_bw`` measured; `measured` and
    `predicted`: the trivial model's step seconds with M and 2M micro-batches ({M: s})."""

    settings: PlannerSettings
    measured: dict
    predicted: dict


def calibrate(stage_ranks: list[list[int]], microbatches: int, topology,
              schedule: str = "1f1b", micro_batch: int = 32, chunks_per_stage: int = 1,
              settings: PlannerSettings = UNCALIBRATED, steps: int = 20, reps: int = 5,
              allreduce_bytes: int = 4 * 2**20) -> Calibration:
    """Measure the runtime's cost per action, per step and per message (call on every rank).

    `topology`, ``settings.cpu_copy_bw``: what the predictions will use (bandwidth and copy
    terms are predicted, not counted as overhead); the other fields of `settings` are
    carried into the result unmeasured. Returns a `Calibration` (the same on every rank).
    """
    import torch.distributed as dist
    import torch.nn.functional as F

    if schedule not in FLUSH:
        raise PlanError(f"calibration runs flush schedules ({', '.join(FLUSH)}), not "
                        f"{schedule!r}; calibrate with 1f1b for pipedream")
    C, rank = len(stage_ranks) * chunks_per_stage, dist.get_rank()
    torch.manual_seed(0)
    model = nn.Sequential(*[Scale() for _ in range(C)])
    prof = profile_model(model, torch.randn(micro_batch, 1), repeats=10, use_cache=False,
                         threads=None)
    over = float(prof.meta.get("stage_overhead_s", 0.0))
    m1, m2 = microbatches, 2 * microbatches
    measured, points = {}, []
    for M in (m1, m2):
        plan = trivial_plan(stage_ranks, micro_batch, M, chunks_per_stage)
        pipe = Pipeline.from_plan(model, plan, lambda out, y: F.mse_loss(out, y), schedule,
                                  chunks_per_stage, optimizer=lambda p: torch.optim.SGD(p, lr=0))
        x, y = torch.randn(M * micro_batch, 1), torch.randn(M * micro_batch, 1)
        pipe.step(x, y)  # warm-up: shape pass, gloo pairs
        measured[M], per_step = _run_steps(pipe, x, y, steps, reps)
        acts = build_schedule(schedule, stage_ranks, M, chunks_per_stage)[rank]
        lay = prof.layers
        compute = sum(lay[a.chunk].forward_s if a.kind == "F" else lay[a.chunk].backward_s + over
                      for a in acts if a.kind in ("F", "B"))
        cpu = float(np.median([cpu_overhead(dt, ev, compute) for dt, ev in per_step]))
        points.append((len(acts), cpu))
    allpts = [None] * dist.get_world_size()
    dist.all_gather_object(allpts, points)
    o, c = fit_line([p for pts in allpts for p in pts])

    def step_of(M: int, lat: float) -> float:
        plan = trivial_plan(stage_ranks, micro_batch, M, chunks_per_stage)
        charged = PlannerSettings(cpu_copy_bw=settings.cpu_copy_bw, action_overhead_s=o,
                                  step_overhead_s=c, latency_s=lat)
        return predict(plan, prof, topology, schedule, chunks_per_stage, charged)["step_s"]

    lat = fit_latency(lambda v: step_of(m1, v), measured[m1])
    ar = allreduce_bw(allreduce_bytes)
    out = [Calibration(settings.replace(action_overhead_s=o, step_overhead_s=c, latency_s=lat,
                                        allreduce_bw=ar),
                       measured, {m: step_of(m, lat) for m in (m1, m2)})]
    dist.broadcast_object_list(out, src=0)
    return out[0]


def _calibrate_rank(stage_ranks, microbatches, topology, schedule, micro_batch, settings):
    return calibrate(stage_ranks, microbatches, topology, schedule, micro_batch,
                     settings=settings)


def calibrate_local(workers: int, microbatches: int, topology, schedule: str = "1f1b",
                    micro_batch: int = 32,
                    settings: PlannerSettings = UNCALIBRATED) -> Calibration:
    """`calibrate` on `workers` spawned local gloo ranks, one stage per rank."""
    from weft.launch import launch

    stages = [[r] for r in range(workers)]
    return launch(_calibrate_rank, workers, args=(stages, microbatches, topology, schedule,
                                                  micro_batch, settings), timeout=120)[0]
