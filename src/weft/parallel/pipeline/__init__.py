"""Pipeline parallelism runtime: plans and schedules as data, one executor, weight stashing,
timelines."""

from weft.parallel.pipeline.actions import Action, dump_csv, load_csv
from weft.parallel.pipeline.layers import as_sequential
from weft.parallel.pipeline.runtime import Pipeline, TransferTimeout
from weft.parallel.pipeline.schedule import (KINDS, build_schedule, compute_order, lower,
                                             simulate_pipeline, validate_schedule)
from weft.parallel.pipeline.stages import PipelinePlan, Stage, equal_bounds, from_boundaries
from weft.parallel.pipeline.timeline import bubble_fraction, draw

__all__ = ["Pipeline", "TransferTimeout", "PipelinePlan", "Stage", "from_boundaries",
           "equal_bounds", "as_sequential", "Action", "KINDS", "build_schedule",
           "compute_order", "lower", "validate_schedule", "simulate_pipeline", "dump_csv",
           "load_csv", "bubble_fraction", "draw"]
