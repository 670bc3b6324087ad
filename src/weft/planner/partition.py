"""The partitioners: the optimal plan (flat or hierarchical DP) and the equal-layers baseline.

    plan = partition(profile, topology, workers=8, micro_batch=32, microbatches=8)

`partition` picks the flat dynamic program of `weft.planner.cost.CostModel` or the
hierarchical one of `weft.planner.hierarchy` (PipeDream's level by level); both are
exact for the cost model described in `weft.planner.cost`.
"""

from __future__ import annotations

from weft.errors import PlanError
from weft.parallel.pipeline.stages import PipelinePlan, equal_bounds
from weft.planner.cost import CostModel
from weft.planner.hierarchy import is_hierarchical, partition_hierarchical
from weft.planner.profile import ModelProfile
from weft.planner.settings import UNCALIBRATED, PlannerSettings
from weft.topology.model import Topology


def partition(profile: ModelProfile, topology: Topology, workers: int | None = None,
              micro_batch: int | None = None, microbatches: int = 4, optimizer_states: int = 1,
              stash: bool = True, method: str = "auto",
              settings: PlannerSettings = UNCALIBRATED, **plan_kw) -> PipelinePlan:
    """The optimal plan (stage boundaries and replication) for `profile` on `topology`.

    method: 'flat' (one DP over all ranks), 'hierarchical' (PipeDream's level-by-level
    DP: inside a host, then across hosts; see `weft.planner.hierarchy`) or 'auto'
    (hierarchical when the workers span >= 2 hosts of equal size, else flat).
    settings: the measured costs to charge (`PlannerSettings`: cpu_copy_bw,
    action_overhead_s, allreduce_bw and compute_scale are used; see `weft.planner.cost`).
    The plan records them in ``extra["settings"]``.
    """
    if method not in ("auto", "flat", "hierarchical"):
        raise PlanError(f"partition method must be auto, flat or hierarchical, got {method!r}")
    if method == "hierarchical" or (method == "auto" and is_hierarchical(topology, workers)):
        return partition_hierarchical(profile, topology, workers, micro_batch, microbatches,
                                      optimizer_states, stash, settings, **plan_kw)
    cm = CostModel.build(profile, topology, workers, micro_batch, microbatches=microbatches,
                         optimizer_states=optimizer_states, stash=stash, settings=settings)
    _, bounds, reps = cm.solve()
    return cm.to_plan(bounds, reps, "optimal", topology=topology.name, **plan_kw)


def equal_layers(profile: ModelProfile, topology: Topology, workers: int | None = None,
                 micro_batch: int | None = None, microbatches: int = 4,
                 settings: PlannerSettings = UNCALIBRATED, **plan_kw) -> PipelinePlan:
    """The baseline: one stage per worker, each with (about) the same number of layers (its
    times and memory with `settings` charged, as `partition`'s)."""
    cm = CostModel.build(profile, topology, workers, micro_batch, microbatches=microbatches,
                         settings=settings)
    S = min(cm.W, cm.L)
    reps = [1] * S
    reps[-1] += cm.W - S  # more workers than layers: the last stage is replicated
    return cm.to_plan(equal_bounds(cm.L, S), reps, "equal-layers", topology=topology.name,
                      **plan_kw)


def partition_stages(profile: ModelProfile, topology: Topology, stages: int,
                     micro_batch: int | None = None, microbatches: int = 4,
                     optimizer_states: int = 1, stash: bool = False,
                     settings: PlannerSettings = UNCALIBRATED, **plan_kw) -> PipelinePlan:
    """The best pipeline of exactly `stages` stages, one worker each (the first `stages`
    workers): contiguous layer ranges minimising the slowest stage or boundary of
    `weft.planner.cost.CostModel` (a dynamic program over cut positions, exact for that
    model), each stage within its device's memory. What `weft plan pipeline --stages`
    gives when the optimum would replicate instead of pipelining."""
    cm = CostModel.build(profile, topology, stages, micro_batch, microbatches=microbatches,
                         optimizer_states=optimizer_states, stash=stash, settings=settings)
    L = cm.L
    if not 1 <= stages <= L:
        raise PlanError(f"--stages {stages}: the model has {L} layers; choose 1..{L} stages")
    inf = float("inf")
    # best[s][j]: layers [0, j) on stages 0..s-1 (ranks 0..s-1); arg: where stage s-1 starts
    best = [[inf] * (L + 1) for _ in range(stages + 1)]
    arg = [[0] * (L + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        for j in range(s, L - (stages - s) + 1):
            for i in range(s - 1, j):
                if best[s - 1][i] == inf or not cm.fits(i, j, s - 1, 1):
                    continue
                t = max(best[s - 1][i], float(cm.stage_time(i, j, s - 1, 1)))
                if i > 0:
                    t = max(t, float(cm.boundary_time(i, s - 1)))
                if t < best[s][j]:
                    best[s][j], arg[s][j] = t, i
    if best[stages][L] == inf:
        raise PlanError(cm._no_fit_message())
    bounds, j = [], L
    for s in range(stages, 0, -1):
        bounds.append((arg[s][j], j))
        j = arg[s][j]
    return cm.to_plan(bounds[::-1], [1] * stages, f"optimal {stages}-stage",
                      topology=topology.name, **plan_kw)


def from_split_points(profile: ModelProfile, topology: Topology, split_points: list[str],
                      micro_batch: int | None = None, microbatches: int = 4,
                      replicas: list[int] | None = None,
                      settings: PlannerSettings = UNCALIBRATED, **plan_kw) -> PipelinePlan:
    """The plan whose stages start at the modules `split_points` names (one worker each, or
    `replicas[s]`), with its times and memory from the cost model as `partition`'s."""
    from weft.parallel.pipeline.layers import split_bounds

    mods = profile.layer_modules()
    if not any(mods):
        raise PlanError("this profile records no module names per layer (made before split "
                        "points existed): profile the model again")
    bounds = split_bounds(mods, split_points)
    reps = list(replicas) if replicas else [1] * len(bounds)
    if len(reps) != len(bounds):
        raise PlanError(f"{len(split_points)} split points make {len(bounds)} stages but "
                        f"{len(reps)} replica counts were given")
    cm = CostModel.build(profile, topology, sum(reps), micro_batch, microbatches=microbatches,
                         settings=settings)
    plan = cm.to_plan(bounds, reps, "split points", topology=topology.name, **plan_kw)
    plan.split_points = [str(p) for p in split_points]
    return plan


def equal_blocks(profile: ModelProfile, topology: Topology, stages: int,
                 micro_batch: int | None = None, microbatches: int = 4,
                 settings: PlannerSettings = UNCALIBRATED, **plan_kw) -> PipelinePlan:
    """The hand-made baseline for a model of repeated blocks: `stages` stages with (about)
    the same number of blocks each (``profile.meta["blocks"]``, `find_blocks`), the layers
    before the first block in the first stage and those after the last in the last."""
    blocks = [b for b in profile.meta.get("blocks", [])
              if any(b in l.modules for l in profile.layers)]
    if len(blocks) < stages:
        raise PlanError(f"the profile lists {len(blocks)} blocks; equal blocks needs at least "
                        f"one per stage ({stages})")
    edges = equal_bounds(len(blocks), stages)
    plan = from_split_points(profile, topology, [blocks[a] for a, _ in edges[1:]], micro_batch,
                             microbatches, settings=settings, **plan_kw)
    plan.method = "equal blocks"
    return plan
