"""Scheduling policy interface: ``solve(problem) -> Allocation`` and ``evaluate(problem, allocation)``."""

from __future__ import annotations

import numpy as np

from weft.cluster.problem import Allocation, Problem


class SchedulingPolicy:
    name = "policy"
    description = ""
    sense = "max"           # whether a larger objective is better ("max") or smaller ("min")
    packed = False          # True when the policy uses space-sharing pair variables
    aware = True            # False: heterogeneity-agnostic (the mechanism then places it type-blind)

    def __init__(self, packed: bool = False):
        """`packed=True` selects the space-sharing variant (pair rows); its name gets `_packed`."""
        self.packed = packed
        if packed:
            self.name += "_packed"

    def solve(self, prob: Problem) -> Allocation:
        raise NotImplementedError

    def evaluate(self, prob: Problem, alloc: Allocation) -> float:
        """This policy's objective value of any allocation (for POP and comparisons)."""
        return float("nan")

    def empty(self, prob: Problem) -> Allocation:
        return Allocation(np.zeros((prob.n, prob.k)), objective=float("nan"))

    def __repr__(self) -> str:
        return f"<policy {self.name}>"
