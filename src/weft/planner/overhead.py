"""The pipeline runtime's own cost, measured: per schedule action and per step.

    cal = calibrate([[0], [1]], microbatches=8, topology=topo, cpu_copy_bw=bw)  # on every rank
    predict(plan, prof, topo, "1f1b", action_overhead_s=cal["action_s"],
            step_overhead_s=cal["step_s"] + optimizer_step_s)
    partition(prof, topo, ..., action_overhead_s=cal["action_s"])

The profile times layers; the executor also spends time on every action of
its schedule (Python dispatch, posting and waiting on a receive, `isend`, the
loss on the last stage, bookkeeping) and once per step (splitting the batch,
waiting for the last sends, the optimizer call). These costs show when every
rank is the bottleneck (a balanced plan), not when one rank idles.

`calibrate` runs the real `Pipeline` on a trivial model (one scalar-weight layer
per chunk, micro-batches of ``micro_batch x 1`` floats) with the same stage
ranks, schedule and micro-batch count, and also with twice the micro-batches.
It profiles that model with `profile_model` and predicts both runs with
`predict` (link latency and bandwidth, copies, the profiled layer and autograd
times): what the prediction misses is the runtime's overhead. `fit_overhead`
finds the per-action cost ``o`` (the same for every action of every rank) that
makes the predicted difference between the two runs equal the measured one,
then the per-step cost ``c`` that makes the first run match (both >= 0).
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn

from weft.errors import PlanError

FLUSH = ("gpipe", "1f1b", "interleaved")


class Scale(nn.Module):
    """x * w with one scalar weight: a layer with (almost) no compute."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.w


def fit_overhead(step_of: Callable[[int, float], float], m1: int, t1: float, m2: int,
                 t2: float, tol: float = 1e-12) -> tuple[float, float]:
    """(action_s, step_s) such that ``step_of(m2, o) - step_of(m1, o) == t2 - t1`` and
    ``step_of(m1, o) + c == t1``, both clamped at 0.

    `step_of(M, o)` is the predicted step time with M micro-batches and per-action cost o
    (non-decreasing in o, and growing faster for the larger M). Bisection on o.
    """
    if m2 <= m1:
        raise PlanError(f"fit_overhead needs m2 > m1, got m1={m1}, m2={m2}")
    gap = lambda o: (step_of(m2, o) - step_of(m1, o)) - (t2 - t1)  # noqa: E731
    lo, hi = 0.0, max(t1, t2, 1e-9)
    if gap(lo) >= 0:  # the model already predicts the measured growth: no per-action cost
        o = 0.0
    else:
        while gap(hi) < 0:
            hi *= 2
        while hi - lo > tol * max(hi, 1e-30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
        o = (lo + hi) / 2
    return o, max(t1 - step_of(m1, o), 0.0)


def trivial_plan(stage_ranks: list[list[int]], micro_batch: int, microbatches: int,
                 chunks_per_stage: int = 1):
    """The calibration's plan: one trivial layer per chunk on `stage_ranks`."""
    from weft.planner.plan import PipelinePlan, Stage

    S, v = len(stage_ranks), chunks_per_stage
    if v == 1:
        stages = [Stage((s, s + 1), list(r)) for s, r in enumerate(stage_ranks)]
    else:  # interleaved: the runtime recomputes S*v equal chunks from the layer count
        stages = [Stage((s * v, (s + 1) * v), list(r)) for s, r in enumerate(stage_ranks)]
    return PipelinePlan(stages, S * v, micro_batch, microbatches, "calibration").validate()


def _time_steps(pipe, x, y, steps: int, reps: int) -> float:
    """Best (over `reps`) mean seconds per `pipe.step` of `steps` steps, the slowest rank's."""
    import torch.distributed as dist

    best = float("inf")
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            pipe.step(x, y)
        dist.barrier()
        dt = torch.tensor([(time.perf_counter() - t0) / steps], dtype=torch.float64)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        best = min(best, float(dt))
    return best


def calibrate(stage_ranks: list[list[int]], microbatches: int, topology,
              schedule: str = "1f1b", micro_batch: int = 32, chunks_per_stage: int = 1,
              cpu_copy_bw: float | None = None, steps: int = 20, reps: int = 5) -> dict:
    """Measure the runtime's per-action and per-step cost (call on every rank of the group).

    `topology`, `cpu_copy_bw`: what the predictions will use (the link and copy terms are
    predicted, not counted as overhead). Returns {'action_s', 'step_s', 'measured': {M: s},
    'predicted_no_overhead': {M: s}} (the same on every rank: rank 0's fit, broadcast).
    """
    import torch.distributed as dist
    import torch.nn.functional as F

    from weft.parallel.pipeline.runtime import Pipeline
    from weft.planner.predict import predict
    from weft.planner.profile import profile_model

    if schedule not in FLUSH:
        raise PlanError(f"calibration runs flush schedules ({', '.join(FLUSH)}), not "
                        f"{schedule!r}; calibrate with 1f1b for pipedream")
    C = len(stage_ranks) * chunks_per_stage
    torch.manual_seed(0)
    model = nn.Sequential(*[Scale() for _ in range(C)])
    loss = lambda out, y: F.mse_loss(out, y)  # noqa: E731
    measured = {}
    for M in (microbatches, 2 * microbatches):
        plan = trivial_plan(stage_ranks, micro_batch, M, chunks_per_stage)
        pipe = Pipeline.from_plan(model, plan, loss, schedule, chunks_per_stage,
                                  optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
        x, y = torch.randn(M * micro_batch, 1), torch.randn(M * micro_batch, 1)
        pipe.step(x, y)  # warm-up: shape pass, gloo pairs
        measured[M] = _time_steps(pipe, x, y, steps, reps)
    prof = profile_model(model, torch.randn(micro_batch, 1), repeats=10, use_cache=False,
                         threads=None)

    def step_of(M: int, o: float) -> float:
        plan = trivial_plan(stage_ranks, micro_batch, M, chunks_per_stage)
        return predict(plan, prof, topology, schedule, chunks_per_stage,
                       cpu_copy_bw=cpu_copy_bw, action_overhead_s=o)["step_s"]

    m1, m2 = microbatches, 2 * microbatches
    o, c = fit_overhead(step_of, m1, measured[m1], m2, measured[m2])
    out = [{"action_s": o, "step_s": c, "measured": measured,
            "predicted_no_overhead": {m: step_of(m, 0.0) for m in (m1, m2)}}]
    dist.broadcast_object_list(out, src=0)
    return out[0]
