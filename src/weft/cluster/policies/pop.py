"""POP-style partitioning: split the jobs at random into k groups, give each
group 1/k of every accelerator type, solve the groups in parallel threads and
concatenate the allocations. With k=1 it is exactly the full solve."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.problem import Allocation, Problem


class Pop(SchedulingPolicy):
    def __init__(self, inner: SchedulingPolicy, k: int, seed: int = 0, threads: int | None = None):
        if k < 1:
            raise ValueError(f"POP k must be >= 1, got {k}")
        self.inner, self.k, self.seed = inner, k, seed
        self.threads = threads or min(k, 8)
        self.name = f"{inner.name}+pop{k}"
        self.description = f"{inner.description} (POP, {k} sub-problems)"
        self.sense, self.packed, self.aware = inner.sense, inner.packed, inner.aware

    def solve(self, prob: Problem) -> Allocation:
        if self.k == 1 or prob.n <= self.k:
            return self.inner.solve(prob)
        rng = np.random.default_rng(self.seed)
        groups = np.array_split(rng.permutation(prob.n), self.k)
        subs = [prob.subset(np.sort(g), 1.0 / self.k) for g in groups]
        with ThreadPoolExecutor(self.threads) as ex:
            parts = list(ex.map(self.inner.solve, subs))
        X = np.zeros((prob.n, prob.k))
        Y = np.zeros((len(prob.pairs), prob.k))
        for g, sub, part in zip(groups, subs, parts):
            X[np.sort(g)] = part.X
            if len(part.pairs):
                Y[sub.pair_origin] = part.Y
        alloc = Allocation(X, Y, prob.pairs.copy()) if len(prob.pairs) and self.packed else Allocation(X)
        alloc.objective = self.inner.evaluate(prob, alloc)
        return alloc

    def evaluate(self, prob: Problem, alloc: Allocation) -> float:
        return self.inner.evaluate(prob, alloc)
