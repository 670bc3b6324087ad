"""weft.cluster: heterogeneity-aware cluster scheduling (Gavel-style policies,
round-based mechanism, simulator and a real executor). See docs/cluster.md."""

from weft.cluster.model import Cluster, ClusterError, Job
from weft.cluster.policies import get_policy, policy_names
from weft.cluster.problem import Allocation, Problem, build_problem
from weft.cluster.simulator import SimResult, simulate
from weft.cluster.throughputs import ThroughputTable
from weft.cluster.trace import read_trace, write_trace

__all__ = [
           "Allocation",
           "Cluster",
           "ClusterError",
           "Job",
           "Problem",
           "SimResult",
           "ThroughputTable",
           "build_problem",
           "get_policy",
           "policy_names",
           "read_trace",
           "simulate",
           "write_trace",
]
