"""weft.adapt: adaptive, elastic training of the user's own model, data and optimizer
(`fit`): monitors, adaptation policies, switchable sync strategies, elastic resize without
restart, re-planned collectives, fault tolerance and checkpoints, on torch.distributed."""

from weft.adapt.actions import (PolicyError, Replan, Resize, SetBatchSize, SetLR, SwitchStrategy,
                                validate)
from weft.adapt.api import fit
from weft.adapt.callbacks import EvalEvery, Run
from weft.adapt.config import AdaptConfig, ConfigError
from weft.adapt.host import run_elastic
from weft.adapt.monitors import Monitors, noise_scale_terms
from weft.adapt.policy import (AdaptiveBatchSize, Compose, Context, FollowCapacity, Policy,
                               ReplanOnSlowdown, ScheduleResize, SwitchOnNoise, ThroughputScaler)
from weft.adapt.report import plot_run
from weft.adapt.run import run_adaptive
from weft.adapt.rules import load_policy_file, policy_from_dict
from weft.adapt.workload import SpecRef, Workload, WorkloadError

__all__ = ["fit", "Workload", "WorkloadError", "SpecRef", "Run", "EvalEvery", "AdaptConfig",
           "ConfigError", "PolicyError", "Resize", "SetBatchSize", "SetLR", "SwitchStrategy",
           "Replan", "validate", "run_elastic", "run_adaptive", "plot_run", "Monitors",
           "noise_scale_terms", "Policy", "Compose", "Context", "AdaptiveBatchSize",
           "SwitchOnNoise", "ScheduleResize", "ThroughputScaler", "FollowCapacity",
           "ReplanOnSlowdown", "load_policy_file", "policy_from_dict"]
