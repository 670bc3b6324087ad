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
