"""weft.adapt: monitors, adaptation policies, switchable sync strategies, elastic resize
without restart, and fault tolerance (KungFu-style) on torch.distributed."""

from weft.adapt.actions import PolicyError, Resize, SetBatchSize, SetLR, SwitchStrategy, validate
from weft.adapt.config import AdaptConfig, ConfigError
from weft.adapt.host import run_elastic
from weft.adapt.monitors import Monitors, noise_scale_terms
from weft.adapt.policy import (AdaptiveBatchSize, Compose, Context, Policy, ScheduleResize,
                               SwitchOnNoise, ThroughputScaler)
from weft.adapt.report import plot_run
from weft.adapt.run import run_adaptive
from weft.adapt.rules import load_policy_file, policy_from_dict

__all__ = ["AdaptConfig", "ConfigError", "PolicyError", "Resize", "SetBatchSize", "SetLR",
           "SwitchStrategy", "validate", "run_elastic", "run_adaptive", "plot_run", "Monitors",
           "noise_scale_terms", "Policy", "Compose", "Context", "AdaptiveBatchSize",
           "SwitchOnNoise", "ScheduleResize", "ThroughputScaler", "load_policy_file",
           "policy_from_dict"]
