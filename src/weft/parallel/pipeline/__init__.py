"""Pipeline parallelism runtime: schedules as data, one executor, weight stashing, timelines."""

from weft.parallel.pipeline.runtime import Pipeline, TransferTimeout
from weft.parallel.pipeline.schedule import Action, build_schedule, simulate_pipeline
from weft.parallel.pipeline.timeline import bubble_fraction, draw

__all__ = ["Pipeline", "TransferTimeout", "Action", "build_schedule", "simulate_pipeline", "bubble_fraction", "draw"]
