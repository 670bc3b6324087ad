"""weft.cluster: heterogeneity-aware cluster scheduling (Gavel-style policies,
round-based mechanism, simulator, and an executor that runs model specs or
commands under one checkpoint/stop contract). See docs/cluster.md."""

from weft.cluster.contract import JobEnv
from weft.cluster.executor import run_jobs
from weft.cluster.model import Cluster, ClusterError, Job
from weft.cluster.policies import get_policy, policy_names
from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.problem import Allocation, Problem, build_problem
from weft.cluster.simulator import SimResult, simulate
from weft.cluster.spec import load_cluster, load_jobs
from weft.cluster.tasks import CommandTask, ModelTask
from weft.cluster.throughputs import ThroughputTable
from weft.cluster.trace import read_trace, write_trace

__all__ = ["Allocation", "Cluster", "ClusterError", "CommandTask", "Job", "JobEnv", "ModelTask", "Problem",
           "SchedulingPolicy", "SimResult", "ThroughputTable", "build_problem", "get_policy", "load_cluster",
           "load_jobs", "policy_names", "read_trace", "run_jobs", "simulate", "write_trace"]
