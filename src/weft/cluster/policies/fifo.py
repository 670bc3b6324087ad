"""FIFO: jobs in arrival order each get a whole slot, on the fastest type with
room (heterogeneity-aware) or on the first type with room (agnostic)."""

from __future__ import annotations

import numpy as np

from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.problem import Allocation, Problem


class Fifo(SchedulingPolicy):
    sense = "max"

    def __init__(self, aware: bool = True):
        self.aware = aware
        self.name = "fifo" + ("" if aware else "_agnostic")
        self.description = ("first come first served, fastest free type" if aware
                            else "first come first served, any free type")

    def solve(self, prob: Problem) -> Allocation:
        X = np.zeros((prob.n, prob.k))
        free = prob.counts.astype(float).copy()
        for m in np.argsort(prob.arrival, kind="stable"):
            ok = (free >= prob.scale[m] - 1e-9) & (prob.T[m] > 0)
            if not ok.any():
                continue
            j = int(np.argmax(np.where(ok, prob.T[m], -1))) if self.aware else int(np.argmax(ok))
            X[m, j] = 1.0
            free[j] -= prob.scale[m]
        alloc = Allocation(X)
        alloc.objective = self.evaluate(prob, alloc)
        return alloc

    def evaluate(self, prob: Problem, alloc: Allocation) -> float:
        """Number of jobs (in arrival order) served before the first one left waiting."""
        order = np.argsort(prob.arrival, kind="stable")
        served = alloc.time_share()[order] > 1 - 1e-9
        return float(np.argmin(served) if not served.all() else len(served))
