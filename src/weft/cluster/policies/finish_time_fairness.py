"""Finish-time fairness (Themis-style), heterogeneity-aware.

For job m with ``e_m`` seconds in the system and ``rem_m`` steps left,
``rho_m = (e_m + rem_m / eff_m) / (e_m + rem_m / fair_m)``: its finish time
under the allocation divided by its finish time with a 1/n share of the
cluster (``fair_m``). Minimise ``max_m rho_m``. For fixed r the constraint
``rho_m <= r`` is linear (``eff_m >= rem_m / (r D_m - e_m)``), so r is found
by bisection over feasibility LPs; the equal-share allocation gives rho = 1,
so r* <= 1. A final LP maximises throughput among allocations with rho <= r*.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from weft.cluster.policies._lp import LPBlocks, fill_max_sum, lp_feasible
from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.problem import Allocation, Problem


def fair_throughput(prob: Problem) -> np.ndarray:
    frac = np.minimum(1.0, prob.counts.sum() / (max(prob.n, 1) * prob.scale))
    return prob.equal_share_throughput() * frac


class FinishTimeFairness(SchedulingPolicy):
    name = "finish_time_fairness"
    description = "minimise the largest finish-time fairness ratio rho (Themis), heterogeneity-aware"
    sense = "min"

    def __init__(self, packed: bool = False, rel_tol: float = 1e-5):
        self.packed, self.rel_tol = packed, rel_tol
        if packed:
            self.name += "_packed"

    def _need(self, prob, r, D, rem):
        denom = r * D - prob.elapsed
        if (denom <= 0).any():
            return None
        return rem / denom

    def solve(self, prob: Problem, baseline: np.ndarray | None = None) -> Allocation:
        """``baseline[m]`` replaces the denominator ``elapsed + rem / fair`` of rho
        (Gavel counts the isolated-equivalent time of past progress instead of elapsed)."""
        if prob.n == 0:
            return self.empty(prob)
        rem = np.maximum(prob.remaining, 1e-9)
        fair = fair_throughput(prob)
        D = prob.elapsed + rem / fair if baseline is None else np.asarray(baseline, float)
        blocks = LPBlocks(prob, packed=self.packed)
        A0, b0 = blocks.base_constraints()
        A = sp.vstack([A0, -blocks.eff]).tocsr()
        c = np.zeros(blocks.nv)
        best = prob.T.max(axis=1)
        lo = float(((prob.elapsed + rem / np.maximum(best, 1e-12)) / D).max())
        hi = max(1.0, float(((prob.elapsed + rem / fair) / D).max()))   # the fair share is feasible
        while hi - lo > self.rel_tol * hi:
            mid = 0.5 * (lo + hi)
            need = self._need(prob, mid, D, rem)
            ok = need is not None and lp_feasible(c, A, np.concatenate([b0, -need]), blocks.bounds()) is not None
            lo, hi = (lo, mid) if ok else (mid, hi)
        need = self._need(prob, hi, D, rem)
        v = fill_max_sum(blocks, prob.equal_share_throughput(),
                         need / prob.equal_share_throughput() * (1 - 1e-7), self.name)
        alloc = blocks.allocation(v, 0.0)
        alloc.objective = self.evaluate(prob, alloc, baseline)
        return alloc

    def evaluate(self, prob: Problem, alloc: Allocation, baseline: np.ndarray | None = None) -> float:
        rem = np.maximum(prob.remaining, 1e-9)
        eff = alloc.effective_throughput(prob)
        D = prob.elapsed + rem / fair_throughput(prob) if baseline is None else np.asarray(baseline, float)
        with np.errstate(divide="ignore"):
            finish = prob.elapsed + np.where(eff > 0, rem / np.maximum(eff, 1e-300), np.inf)
        return float((finish / D).max())
