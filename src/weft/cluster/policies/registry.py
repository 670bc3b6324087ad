"""Policy registry: name -> factory. ``get_policy(name, pop_k=...)`` wraps any
policy in POP partitioning."""

from __future__ import annotations

from weft.cluster.model import ClusterError
from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.policies.fifo import Fifo
from weft.cluster.policies.finish_time_fairness import FinishTimeFairness
from weft.cluster.policies.max_min_fairness import MaxMinFairness
from weft.cluster.policies.max_throughput import MaxThroughput
from weft.cluster.policies.min_cost import MinCost
from weft.cluster.policies.min_makespan import MinMakespan
from weft.cluster.policies.pop import Pop

POLICIES = {
    "max_min_fairness": lambda: MaxMinFairness(aware=True),
    "max_min_fairness_agnostic": lambda: MaxMinFairness(aware=False),
    "max_min_fairness_packed": lambda: MaxMinFairness(aware=True, packed=True),
    "min_makespan": MinMakespan,
    "min_makespan_packed": lambda: MinMakespan(packed=True),
    "finish_time_fairness": FinishTimeFairness,
    "fifo": lambda: Fifo(aware=True),
    "fifo_agnostic": lambda: Fifo(aware=False),
    "max_throughput": MaxThroughput,
    "min_cost": MinCost,
}
ALIASES = {"las": "max_min_fairness", "las_agnostic": "max_min_fairness_agnostic",
           "las_packed": "max_min_fairness_packed"}


def policy_names() -> list[str]:
    return list(POLICIES)


def get_policy(name: str, pop_k: int = 1, seed: int = 0) -> SchedulingPolicy:
    key = ALIASES.get(name, name)
    if key not in POLICIES:
        raise ClusterError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    policy = POLICIES[key]()
    if hasattr(policy, "seed"):
        policy.seed = seed
    return Pop(policy, pop_k, seed) if pop_k > 1 else policy
