"""Scheduling policies over the allocation matrix X; see ``registry``."""

from weft.cluster.policies.registry import POLICIES, get_policy, policy_names

__all__ = ["POLICIES", "get_policy", "policy_names"]
