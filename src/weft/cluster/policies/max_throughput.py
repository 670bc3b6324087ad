"""Maximise total (normalised) throughput.

Maximises ``sum_m eff_m / T_eq[m]`` (each job's throughput in units of its
equal-time-share throughput, so fast models do not dominate the sum).
"""

from __future__ import annotations

import numpy as np

from weft.cluster.policies._lp import LPBlocks, solve_lp
from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.problem import Allocation, Problem


class MaxThroughput(SchedulingPolicy):
    name = "max_throughput"
    description = "maximise the sum of normalised job throughputs"
    sense = "max"

    def solve(self, prob: Problem) -> Allocation:
        if prob.n == 0:
            return self.empty(prob)
        blocks = LPBlocks(prob, packed=self.packed)
        A, b = blocks.base_constraints()
        norm = prob.equal_share_throughput()
        c = -np.asarray(blocks.eff.T @ (1.0 / norm)).ravel()
        v = solve_lp(c, A, b, blocks.bounds(), self.name)
        alloc = blocks.allocation(v, 0.0)
        alloc.objective = self.evaluate(prob, alloc)
        return alloc

    def evaluate(self, prob: Problem, alloc: Allocation) -> float:
        return float((alloc.effective_throughput(prob) / prob.equal_share_throughput()).sum())
