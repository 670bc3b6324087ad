"""Runtimes: data, tensor and pipeline parallelism; checkpoints."""

from weft.parallel.checkpoint import load_checkpoint, restore, save_checkpoint, training_state
from weft.parallel.data import DataParallel, data_parallel, distributed_loader, seed_everything, unwrap
from weft.parallel.progress import progress

__all__ = ["DataParallel", "data_parallel", "distributed_loader", "seed_everything", "unwrap", "progress",
           "save_checkpoint", "load_checkpoint", "training_state", "restore"]
