"""The PipeDream planner: profile a model, partition it over a topology, predict the result.

    from weft.planner import PlannerSettings, partition, predict, profile_model

    prof = profile_model(model, torch.randn(32, 64))             # per-layer costs
    plan = partition(prof, topology, workers=4, microbatches=8)  # a PipelinePlan
    predict(plan, prof, topology, "1f1b")                        # {'samples_per_s', ...}

The measured costs of the runtime and the machine (`calibrate`, `contention`) travel as
one `PlannerSettings`. The plan it writes is `weft.parallel.pipeline.PipelinePlan`, which
the pipeline runtime executes.
"""

from weft.planner.contention import balanced_bounds, contention, contention_local
from weft.planner.cost import CostModel, workers_of
from weft.planner.hierarchy import Hierarchy, is_hierarchical, partition_hierarchical
from weft.planner.overhead import Calibration, calibrate, calibrate_local
from weft.planner.partition import (equal_blocks, equal_layers, from_split_points, partition,
                                     partition_stages)
from weft.planner.predict import predict
from weft.planner.profile import LayerProfile, ModelProfile, profile_model
from weft.planner.settings import PlannerSettings

__all__ = ["profile_model", "ModelProfile", "LayerProfile", "partition", "partition_hierarchical",
           "partition_stages", "from_split_points", "equal_layers", "equal_blocks", "predict",
           "CostModel", "Hierarchy", "is_hierarchical", "workers_of",
           "calibrate", "calibrate_local", "Calibration", "contention", "contention_local",
           "balanced_bounds", "PlannerSettings"]
