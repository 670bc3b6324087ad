"""Minimise cost subject to SLOs.

Each job must get at least the throughput it needs: ``remaining / time to its
deadline`` for jobs with an SLO, its 1/n fair-share throughput otherwise.
Minimise the dollar rate ``sum_j price_j * (accelerators of type j in use)``.
If the needs cannot all be met, a heavily penalised shortfall variable per job
keeps the LP feasible; ``extra['shortfall']`` reports it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from weft.cluster.policies._lp import LPBlocks, solve_lp
from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.policies.finish_time_fairness import fair_throughput
from weft.cluster.problem import Allocation, Problem


def needed_throughput(prob: Problem) -> np.ndarray:
    fair = fair_throughput(prob)
    with np.errstate(divide="ignore", invalid="ignore"):
        slo = np.where(np.isfinite(prob.deadline), prob.remaining / np.maximum(prob.deadline, 1e-9), 0.0)
    return np.where(np.isfinite(prob.deadline), slo, fair)


class MinCost(SchedulingPolicy):
    name = "min_cost"
    description = "minimise $/h subject to SLO deadlines (fair-share throughput for jobs without SLO)"
    sense = "min"

    def solve(self, prob: Problem) -> Allocation:
        if prob.n == 0:
            return self.empty(prob)
        need = np.maximum(needed_throughput(prob), 1e-12)
        blocks = LPBlocks(prob, packed=self.packed)
        A0, b0 = blocks.base_constraints(prob.n)
        # -eff_m - need_m * s_m <= -need_m   (s_m in [0, 1] is the fractional shortfall)
        lower = sp.hstack([-blocks.eff, -sp.diags(need)])
        A = sp.vstack([A0, lower]).tocsr()
        b = np.concatenate([b0, -need])
        cost = np.asarray(blocks.cap.T @ prob.prices).ravel()
        penalty = 1e3 * max(prob.prices.max(), 1e-9) * max(prob.counts.sum(), 1.0)
        c = np.concatenate([cost, np.full(prob.n, penalty)])
        v = solve_lp(c, A, b, blocks.bounds([(0, 1)] * prob.n), self.name)
        alloc = blocks.allocation(v, 0.0)
        alloc.objective = self.evaluate(prob, alloc)
        alloc.extra["shortfall"] = v[blocks.nv:].copy()
        return alloc

    def evaluate(self, prob: Problem, alloc: Allocation) -> float:
        return float(alloc.used(prob) @ prob.prices)
