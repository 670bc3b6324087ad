"""FIFO: jobs in arrival order each get a whole slot, on the fastest type with
room (heterogeneity-aware) or on a type drawn at random among those with room
(agnostic; each job's order of preference over the types is drawn once from
``(seed, job id)``, so re-solves do not move it, and no job is steered to the
fastest type)."""

from __future__ import annotations

import numpy as np

from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.problem import Allocation, Problem


class Fifo(SchedulingPolicy):
    sense = "max"

    def __init__(self, aware: bool = True, seed: int = 0):
        self.aware, self.seed = aware, seed
        self.name = "fifo" + ("" if aware else "_agnostic")
        self.description = ("first come first served, fastest free type" if aware
                            else "first come first served, a random free type")

    def solve(self, prob: Problem) -> Allocation:
        X = np.zeros((prob.n, prob.k))
        free = prob.counts.astype(float).copy()
        for m in np.argsort(prob.arrival, kind="stable"):
            ok = (free >= prob.scale[m] - 1e-9) & (prob.T[m] > 0)
            if not ok.any():
                continue
            if self.aware:
                j = int(np.argmax(np.where(ok, prob.T[m], -1)))
            else:
                pref = np.random.default_rng([self.seed, int(prob.ids[m])]).permutation(prob.k)
                j = int(pref[np.argmax(ok[pref])])
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
