"""Minimise makespan: the time until the last active job finishes.

With job m finishing after ``remaining_m / eff_m`` seconds, minimising the
largest of these is the LP: maximise t s.t. ``eff_m >= t * remaining_m``;
the makespan is ``1 / t`` seconds (the reported objective).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from weft.cluster.policies._lp import LPBlocks, fill_max_sum, solve_lp
from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.problem import Allocation, Problem


class MinMakespan(SchedulingPolicy):
    name = "min_makespan"
    description = "heterogeneity-aware minimum makespan (all active jobs done soonest)"
    sense = "min"

    def solve(self, prob: Problem) -> Allocation:
        if prob.n == 0:
            return self.empty(prob)
        rem = np.maximum(prob.remaining, 1e-9)
        blocks = LPBlocks(prob, packed=self.packed)
        A0, b0 = blocks.base_constraints(1)
        W = sp.diags(1.0 / rem) @ blocks.eff
        A = sp.vstack([A0, sp.hstack([-W, sp.csr_matrix(np.ones((prob.n, 1)))])]).tocsr()
        c = np.zeros(blocks.nv + 1)
        c[-1] = -1.0
        v = solve_lp(c, A, np.concatenate([b0, np.zeros(prob.n)]), blocks.bounds([(0, None)]), self.name)
        t = float(v[-1])
        v = fill_max_sum(blocks, rem, np.full(prob.n, t * (1 - 1e-7)), self.name)
        alloc = blocks.allocation(v, 0.0)
        alloc.objective = self.evaluate(prob, alloc)
        return alloc

    def evaluate(self, prob: Problem, alloc: Allocation) -> float:
        eff = alloc.effective_throughput(prob)
        with np.errstate(divide="ignore"):
            return float(np.max(np.where(eff > 0, prob.remaining / np.maximum(eff, 1e-300), np.inf)))
