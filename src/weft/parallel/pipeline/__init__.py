"""Pipeline parallelism runtime: layers at block granularity, plans and schedules as data, one
executor, shared parameters kept equal, weight stashing, timelines."""

from weft.parallel.pipeline.actions import Action, dump_csv, load_csv
from weft.parallel.pipeline.layers import (as_sequential, find_blocks, layer_modules,
                                           shared_parameters, split_bounds, split_by_names)
from weft.parallel.pipeline.runtime import Pipeline, TransferTimeout
from weft.parallel.pipeline.schedule import (KINDS, SCHEDULES, build_schedule, compute_order,
                                             lower, simulate_pipeline, validate_schedule)
from weft.parallel.pipeline.stages import (ModelChangedWarning, PipelinePlan, Stage,
                                           equal_bounds, from_boundaries)
from weft.parallel.pipeline.timeline import bubble_fraction, draw

__all__ = ["Pipeline", "TransferTimeout", "PipelinePlan", "Stage", "from_boundaries",
           "equal_bounds", "as_sequential", "find_blocks", "layer_modules", "split_bounds",
           "split_by_names", "shared_parameters", "ModelChangedWarning", "Action", "KINDS",
           "SCHEDULES", "build_schedule", "compute_order", "lower", "validate_schedule",
           "simulate_pipeline", "dump_csv", "load_csv", "bubble_fraction", "draw"]
