"""Tick-tock pipeline schedule: the micro-batches of a step as waves whose memory peaks
interleave (Wavelet's tick-tock, applied to micro-batch waves on one pipeline).

GPipe runs every forward, then every backward: each stage holds the activations of all M
micro-batches at once. Tick-tock splits the micro-batches into `waves` consecutive waves
(two by default: the tick wave 0..ceil(M/2)-1 and the tock wave after it). The tick wave runs
its forwards; then, on every stage, the tock wave's forwards alternate with the tick wave's
backwards, so each activation the tock wave stores replaces one the tick wave frees (the
tock wave's memory peak meets the tick wave's trough); then the tock wave's backwards. A stage
holds at most ceil(M / waves) + 1 micro-batches' activations instead of M, keeping GPipe's
order within each wave. (1F1B holds fewer, S - s, when M is large: tick-tock's point is
the interleaving of the waves, at GPipe's simplicity.)

The builder writes each rank's compute-only order; `schedule.lower` adds the transfers and
`schedule.validate_schedule` checks the result, like every other schedule:

    sched = build_ticktock([[0], [1], [2]], microbatches=8)   # lowered and validated
    compute_order([[0], [1]], 4)                               # compute-only, per rank

`weft.parallel.pipeline.schedule.compute_order("ticktock", ...)` (and so `build_schedule` and
the `Pipeline` runtime, ``schedule="ticktock"``) dispatch here.
"""

from __future__ import annotations

from itertools import zip_longest

from weft.errors import PlanError
from weft.parallel.pipeline.actions import Action


def waves_of(microbatches: int, waves: int = 2) -> list[list[int]]:
    """Micro-batches 0..M-1 cut into consecutive waves of ceil(M / waves) (empty ones left
    out)."""
    if waves < 1:
        raise PlanError(f"tick-tock needs at least one wave, got {waves}")
    size = -(-microbatches // waves)
    return [list(range(lo, min(lo + size, microbatches)))
            for lo in range(0, microbatches, size)]


def stage_order(microbatches: int, waves: int = 2) -> list[tuple[str, int]]:
    """The (kind, micro-batch) order every stage runs: wave 0's forwards, then each wave's
    forwards alternating with the previous wave's backwards, then the last wave's backwards."""
    ws = waves_of(microbatches, waves)
    ops = [("F", m) for m in ws[0]]
    for prev, cur in zip(ws, ws[1:]):
        for f, b in zip_longest(cur, prev):
            if f is not None:
                ops.append(("F", f))
            if b is not None:
                ops.append(("B", b))
    ops += [("B", m) for m in ws[-1]]
    return ops


def compute_order(stage_ranks: list[list[int]], microbatches: int, chunks_per_stage: int = 1,
                  waves: int = 2) -> dict[int, list[Action]]:
    """Per-rank compute-only actions of the tick-tock schedule on stages `stage_ranks[s]`
    (replicas: micro-batch mb runs on replica ``mb % r``, as in every weft schedule)."""
    if chunks_per_stage != 1:
        raise PlanError(f"the tick-tock schedule runs one chunk per stage, got "
                        f"{chunks_per_stage}")
    if microbatches < 1:
        raise PlanError(f"need at least one micro-batch, got {microbatches}")
    order = stage_order(microbatches, waves)
    out: dict[int, list[Action]] = {r: [] for reps in stage_ranks for r in reps}
    for s, reps in enumerate(stage_ranks):
        for idx, rank in enumerate(reps):
            out[rank] = [Action(op, m, s) for op, m in order if m % len(reps) == idx]
    return out


def build_ticktock(stage_ranks: list[list[int]], microbatches: int,
                   waves: int = 2) -> dict[int, list[Action]]:
    """The tick-tock schedule with its transfers, checked by `validate_schedule`."""
    from weft.parallel.pipeline.schedule import lower, validate_schedule

    sched = lower(compute_order(stage_ranks, microbatches, 1, waves), stage_ranks)
    validate_schedule(sched, stage_ranks, microbatches)
    return sched
