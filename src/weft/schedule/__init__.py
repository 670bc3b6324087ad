"""weft.schedule: heterogeneity-aware cluster scheduling (Gavel-style policies,
round-based mechanism, simulator and a real executor). See docs/schedule.md."""

from weft.schedule.model import Cluster, Job, ScheduleError
from weft.schedule.policies import get_policy, policy_names
from weft.schedule.problem import Allocation, Problem, build_problem
from weft.schedule.simulator import SimResult, simulate
from weft.schedule.throughputs import ThroughputTable
from weft.schedule.trace import read_trace, write_trace

__all__ = ["Allocation", "Cluster", "Job", "Problem", "ScheduleError", "SimResult", "ThroughputTable",
           "build_problem", "get_policy", "policy_names", "read_trace", "simulate", "write_trace"]
