"""Max-min fairness (Gavel's LAS), heterogeneity-aware or agnostic, with priority weights.

As in Gavel's code: agnostic maximises ``min_m scale_m * time_m / w_m`` (equal
accelerator-time per unit weight, throughputs ignored); aware maximises
``min_m scale_m * sum_j T[m,j] X[m,j] / (w_m * N_m)`` where ``N_m`` is the job's
throughput under the agnostic allocation, i.e. ``(w_m / scale_m) * T_eq[m]`` up to
a factor common to all jobs, with ``T_eq[m]`` its throughput under an equal time
share across types (each type in proportion to its count).
A second LP keeps every job at or above the optimum ``t`` and maximises the
sum of normalised throughputs, so no capacity the max-min optimum leaves idle
is wasted (the objective value is unchanged). The agnostic policy, which by
design cannot prefer one type over another, then spreads each job's time
across the types it can use in proportion to their counts, as closely as
capacity allows (an L1-nearest LP with every job's total time share fixed);
otherwise an LP vertex would park jobs arbitrarily on one type.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from weft.cluster.policies._lp import LPBlocks, fill_max_sum, solve_lp, spread_evenly
from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.problem import Allocation, Problem


class MaxMinFairness(SchedulingPolicy):
    sense = "max"

    def __init__(self, aware: bool = True, packed: bool = False, fill: bool = True, aggregate: bool = True):
        self.aware, self.packed, self.fill, self.aggregate = aware, packed, fill, aggregate
        self.name = "max_min_fairness" + ("" if aware else "_agnostic") + ("_packed" if packed else "")
        self.description = (("heterogeneity-aware" if aware else "heterogeneity-agnostic (equal time)")
                            + " max-min fairness / LAS with priority weights"
                            + (", with space sharing" if packed else ""))

    def _throughputs(self, prob: Problem) -> tuple[np.ndarray, np.ndarray]:
        # Gavel (scheduler/policies/max_min_fairness.py) maximises
        # min_m scale_m * (T X)_m / (w_m * N_m): a job on `scale` accelerators gets
        # 1/scale of the time of a single-accelerator one. Agnostic: T = 1, N = 1.
        # Aware: N_m = job m's throughput under the agnostic allocation, which
        # gives it time in proportion to w_m / scale_m spread over the types,
        # so N_m is proportional to (w_m / scale_m) * T_eq[m] (and the weight
        # enters squared, as in Gavel's code).
        T = prob.T if self.aware else (prob.T > 0).astype(float)
        share = prob.counts / max(prob.counts.sum(), 1e-12)
        ws = prob.weight / prob.scale
        norm = ws * np.maximum(T @ share, 1e-12)
        if self.aware:
            norm = norm * ws
        return T, norm

    def solve(self, prob: Problem) -> Allocation:
        if prob.n == 0:
            return self.empty(prob)
        T, norm = self._throughputs(prob)
        if self.packed or not self.aggregate:
            sub, inv, mult = prob, None, None
            if not self.aware:
                sub = Problem(T, prob.scale, prob.counts, pairs=prob.pairs,
                              TP=(prob.TP > 0).astype(float), types=prob.types)
        else:
            # Jobs with equal rows (type, scale, weight) are interchangeable; by
            # symmetry and convexity some optimum gives them equal rows, so solve
            # one row per class with capacity coefficient count x scale.
            rows = np.column_stack([T, norm, prob.scale])
            uniq, inv, mult = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
            inv = inv.ravel()
            k = T.shape[1]
            sub = Problem(uniq[:, :k], uniq[:, k + 1] * mult, prob.counts, types=prob.types)
            T, norm = uniq[:, :k], uniq[:, k]
        blocks = LPBlocks(sub, T, self.packed)
        n = blocks.n
        A0, b0 = blocks.base_constraints(1)
        W = sp.diags(1.0 / norm) @ blocks.eff
        fair = sp.hstack([-W, sp.csr_matrix(np.ones((n, 1)))])
        A = sp.vstack([A0, fair]).tocsr()
        b = np.concatenate([b0, np.zeros(n)])
        c = np.zeros(blocks.nv + 1)
        c[-1] = -1.0
        v = solve_lp(c, A, b, blocks.bounds([(0, None)]), self.name)
        t = float(v[-1])
        if self.fill:
            v = fill_max_sum(blocks, norm, np.full(n, t * (1 - 1e-7)), self.name, mult)
            if not self.aware:
                v = spread_evenly(blocks, v, prob.counts, self.name, mult)
        alloc = blocks.allocation(v, t)
        if inv is not None:
            alloc.X = alloc.X[inv]
        alloc.objective = self.evaluate(prob, alloc)
        return alloc

    def evaluate(self, prob: Problem, alloc: Allocation) -> float:
        if prob.n == 0:
            return float("nan")
        T, norm = self._throughputs(prob)
        if self.aware:
            eff = alloc.effective_throughput(prob)
        else:
            eff = (T * alloc.X).sum(axis=1)
            if len(alloc.pairs):
                for side in (0, 1):
                    np.add.at(eff, alloc.pairs[:, side], alloc.Y.sum(axis=1))
        return float((eff / norm).min())
