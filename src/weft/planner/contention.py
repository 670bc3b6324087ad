"""Compute contention between ranks, measured: how much slower they compute all at once.

    c = contention(model, torch.randn(32, 64), layers=balanced_bounds(prof, W)[rank])
    s = PlannerSettings(compute_scale=c["compute_scale"])  # c is the same on every rank
    partition(prof, topo, ..., settings=s)
    predict(plan, prof, topo, "1f1b", settings=s, contention="overlap")

A profile times each layer in one process while nothing else of the job runs.
In a pipeline every rank computes at the same time, and ranks that share
cores, caches or memory bandwidth (local gloo ranks on a small CPU, other
tenants, gloo's own threads) then compute slower than profiled; on a machine
with one dedicated accelerator per rank they should not. `contention` measures
it instead of assuming either: on the ranks the pipeline will use, every rank
times the real model's forward + backward on one micro-batch (the whole model,
or the layers ``layers=(first, end)``: each rank may pass its own, e.g. the
r-th of `balanced_bounds`, stage-sized slices as in a balanced pipeline)

* **solo**: one rank at a time runs `passes` passes back to back (as the
  profile) while the others wait in a barrier (ranks take turns), and
* **concurrent**: every rank at once; with ``handoff`` (default) each pass
  starts right after a barrier with the other ranks, as a stage's compute
  starts right after a blocking receive (compute right after a blocking wait
  was measurably slower than back-to-back compute on the 2-core test machine,
  likely cold caches or a rescheduled thread), else back to back,

in `rounds` interleaved rounds (solo turns and the concurrent trial alternate
their order, so both see the same background load). A trial counts its mean
per pass; `statistic` ('min', as the benchmark's profile, or 'median') picks
one value per rank and mode over the rounds; 'slowest' takes the solo trials' minimum
(as a profile times a layer) and, of the concurrent passes, the median over passes of the
slowest rank's pass (as `weft.planner.measure` times a step: the slowest rank, the median
over steps; on 4 ranks sharing 2 cores that was 1.2-1.3x the ranks' own medians,
docs/planner.md). A rank's factor is concurrent / solo, and ``compute_scale`` is
the mean of the ranks' factors: the partitioner multiplies every profiled forward and
backward time (and the per-stage autograd call) by it; `predict` does too, or with
``contention="overlap"`` charges each rank in proportion to the other ranks' concurrent
compute (`settle_scales`).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn as nn

from weft.errors import PlanError

STATISTICS = ("min", "median", "slowest")


def stage_pass(model: nn.Module, sample: torch.Tensor, layers: tuple[int, int] | None = None,
               trace: str = "auto", split: bool = False):
    """A function running one training forward + backward of `model`'s layers
    ``[first, end)`` (all by default) on `sample`, as a pipeline stage does: the stage's
    input is the real output of the layers before it, it needs a gradient unless the
    stage is first, parameter gradients accumulate. With `split`, a pair of functions
    (forward, backward of that forward's output), to be called alternately."""
    from weft.planner.profile import backward_ones, input_safe

    if layers is None:  # the whole model, called as it is (any output structure)
        inp = sample
        part = input_safe(model, inp)  # on a copy if it changes its input in place
    else:
        from weft.parallel.pipeline.layers import as_sequential

        seq = as_sequential(model, sample, trace)
        L = len(seq)
        first, end = int(layers[0]), int(layers[1])
        if not 0 <= first < end <= L:
            raise PlanError(f"contention: layers [{first}, {end}) is not a non-empty range of "
                            f"the model's {L} layers")
        with torch.no_grad():
            x = seq[:first](sample) if first else sample
        stage = seq[first:end]
        inp = x.detach().requires_grad_(first > 0 and x.is_floating_point())
        part = input_safe(stage, inp)  # on a copy if it changes its input in place (as the runtime)

    def run():
        backward_ones(part(inp))

    if not split:
        return run
    held = []

    def forward():
        held.append(part(inp))

    def backward():
        backward_ones(held.pop())

    return forward, backward


def balanced_bounds(profile, workers: int) -> list[tuple[int, int]]:
    """`workers` contiguous non-empty layer ranges of about equal profiled compute (the
    stages of a balanced pipeline); with fewer layers than workers, one range per layer,
    repeated round robin."""
    L = len(profile.layers)
    if workers < 1 or L < 1:
        raise PlanError(f"balanced_bounds needs >= 1 worker and layer, got {workers}, {L}")
    S = min(workers, L)
    c = np.concatenate([[0.0], np.cumsum([l.compute_s for l in profile.layers])])
    cuts = [0]
    for k in range(1, S):  # the cut nearest k/S of the compute, leaving a layer per stage
        lo, hi = cuts[-1] + 1, L - (S - k)
        cuts.append(lo + int(np.argmin(np.abs(c[lo:hi + 1] - c[-1] * k / S))))
    cuts.append(L)
    stages = list(zip(cuts[:-1], cuts[1:]))
    return [stages[r % S] for r in range(workers)]


def _trial(works, passes: int, sync=None, slowest=None):
    """Mean seconds per pass of `passes` passes, a pass calling each of `works` in turn;
    with `sync`, each call starts right after `sync()` returns (not timed). With
    `slowest` (a function of this rank's seconds of one pass, the same on every rank: the
    slowest rank's), the list of each pass's `slowest` instead of the mean."""
    out = []
    for _ in range(passes):
        total = 0.0
        for w in works:
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            w()
            total += time.perf_counter() - t0
        # slowest is a collective: every rank ends each pass together, as the step does
        out.append(slowest(total) if slowest is not None else total)
    return out if slowest is not None else sum(out) / passes


def measure(work, rounds: int = 10, passes: int = 4, statistic: str = "min",
            group=None, handoff: bool = True) -> dict:
    """Solo and concurrent seconds per pass of `work` (a no-argument function, or a tuple of
    them called in turn, e.g. `stage_pass(split=True)`'s) on every rank of `group` (call
    on all of them; see the module doc).

    handoff: every concurrent call of a work function starts right after a barrier with
    the other ranks (as a stage's compute starts right after a blocking receive); False:
    back to back.
    Returns {'solo_s', 'concurrent_s', 'factors': per rank (in group order),
    'compute_scale', 'ranks', 'rounds', 'passes', 'statistic', 'handoff'} (the same on
    every rank).
    """
    import torch.distributed as dist

    if statistic not in STATISTICS:
        raise PlanError(f"contention statistic must be 'min', 'median' or 'slowest', got "
                        f"{statistic!r}")
    if rounds < 1 or passes < 1:
        raise PlanError(f"contention needs rounds >= 1 and passes >= 1, got {rounds}, {passes}")
    W = dist.get_world_size(group)
    me = dist.get_rank(group) if group is not None else dist.get_rank()
    works = tuple(work) if isinstance(work, (tuple, list)) else (work,)
    for w in works:  # warm-up: allocator, kernels
        w()
    solo, conc = [], []

    def solo_turns():
        for r in range(W):
            dist.barrier(group)
            if r == me:
                solo.append(_trial(works, passes))
        dist.barrier(group)

    def slowest(t: float) -> float:
        x = torch.tensor([t], dtype=torch.float64)
        dist.all_reduce(x, op=dist.ReduceOp.MAX, group=group)
        return float(x)

    def together():
        dist.barrier(group)
        got = _trial(works, passes, (lambda: dist.barrier(group)) if handoff else None,
                     slowest if statistic == "slowest" else None)
        if statistic == "slowest":
            conc.extend(got)
        else:
            conc.append(got)
        dist.barrier(group)

    for k in range(rounds):
        for phase in ((solo_turns, together) if k % 2 == 0 else (together, solo_turns)):
            phase()
    pick = min if statistic == "min" else statistics.median
    mine = torch.tensor([min(solo) if statistic == "slowest" else pick(solo), pick(conc)],
                        dtype=torch.float64)
    every = [torch.zeros(2, dtype=torch.float64) for _ in range(W)]
    dist.all_gather(every, mine, group=group)
    s = [float(t[0]) for t in every]
    c = [float(t[1]) for t in every]
    factors = [ci / si if si > 0 else 1.0 for si, ci in zip(s, c)]
    ranks = list(range(W)) if group is None else dist.get_process_group_ranks(group)
    return {"compute_scale": sum(factors) / W, "factors": factors, "solo_s": s,
            "concurrent_s": c, "ranks": ranks, "rounds": rounds, "passes": passes,
            "statistic": statistic, "handoff": handoff}


def contention(model: nn.Module, sample: torch.Tensor, layers: tuple[int, int] | None = None,
               rounds: int = 10, passes: int = 4, statistic: str = "min",
               threads: int | None = 1, trace: str = "auto", group=None,
               handoff: bool | str = True) -> dict:
    """Measure how much slower `model`'s forward + backward on the micro-batch `sample`
    runs when every rank computes at once than alone (call on every rank of `group`).

    layers: this rank's stage ``(first, end)`` (each rank may pass its own); default the
    whole model. threads: torch intra-op threads while measuring (1, as the profile and
    `weft.launch` ranks; None keeps the setting). handoff: True, a barrier before each
    concurrent pass; "action", before its forward and before its backward (as in 1F1B,
    where either may follow a blocking receive); False, none. Returns `measure`'s dict.
    """
    if handoff not in (True, False, "action"):
        raise PlanError(f"contention handoff must be True, False or 'action', got {handoff!r}")
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        with torch.enable_grad():
            work = stage_pass(model, sample, layers, trace, split=handoff == "action")
            return {**measure(work, rounds, passes, statistic, group, bool(handoff)),
                    "handoff": handoff}
    finally:
        torch.set_num_threads(old)


def overlap_fractions(schedule: dict, times: dict) -> dict[int, float]:
    """u_r for every rank of a simulated schedule (the 'times' of
    `weft.parallel.pipeline.schedule.simulate_pipeline`): the fraction of rank r's F/B time during which another rank runs F/B too,
    averaged over the other ranks (0 for a rank alone or without compute)."""
    iv = {r: [(s, e) for a, (s, e) in zip(acts, times[r]) if a.kind in ("F", "B") and e > s]
          for r, acts in schedule.items()}
    out = {}
    for r, mine in iv.items():
        total = sum(e - s for s, e in mine)
        others = [q for q in iv if q != r]
        if total <= 0 or not others:
            out[r] = 0.0
            continue
        # each rank's intervals are disjoint, so pairwise intersections add up
        out[r] = sum(sum(max(0.0, min(e, e2) - max(s, s2)) for s, e in mine for s2, e2 in iv[q])
                     for q in others) / (total * len(others))
    return out


def settle_scales(schedule: dict, k: float, run, iters: int = 30, tol: float = 1e-9):
    """Per-rank compute factors ``1 + (k - 1) * u_r`` consistent with the overlaps u_r they
    produce: `run(scales)` simulates with them; starts from k everywhere (all busy) and
    re-simulates until no factor moves by more than ``tol * k`` (at most `iters` times).
    Returns (scales, the simulation with exactly those scales)."""
    scales = {r: k for r in schedule}
    res = run(scales)
    for _ in range(iters):
        u = overlap_fractions(schedule, res["times"])
        new = {r: 1.0 + (k - 1.0) * u[r] for r in schedule}
        if max(abs(new[r] - scales[r]) for r in schedule) <= tol * k:
            break
        scales = new
        res = run(scales)
    return scales, res


def _contention_rank(spec, model, sample, bounds, rounds, passes, statistic):
    import torch.distributed as dist

    if spec is not None:
        from weft.model_spec import load_model

        model = load_model(spec)
    layers = bounds[dist.get_rank()] if bounds else None
    return contention(model, sample, layers, rounds=rounds, passes=passes, statistic=statistic)


def contention_local(workers: int, sample: torch.Tensor, model: nn.Module | None = None,
                     spec: str | None = None, profile=None, rounds: int = 10,
                     passes: int = 4, statistic: str = "min") -> dict:
    """`contention` on `workers` spawned local gloo ranks. Give the model itself
    (picklable) or its `spec` (``path.py[:attr]``, loaded in every rank). With its
    `profile`, rank r times the r-th of `balanced_bounds` (stage-sized passes, different
    layers on every rank as in a pipeline); else every rank times the whole model."""
    from weft.launch import launch

    if (model is None) == (spec is None):
        raise PlanError("contention_local needs exactly one of model= or spec=")
    if workers < 1:
        raise PlanError(f"contention needs at least one worker, got {workers}")
    bounds = balanced_bounds(profile, workers) if profile is not None else None
    return launch(_contention_rank, workers,
                  args=(spec, model, sample, bounds, rounds, passes, statistic), timeout=120)[0]
