"""Class grouping: G groups of (nearly) equal size, by balanced k-means over per-class vectors.

sensAI splits N classes into G subnets; equal group sizes keep the subnets' work, and so the
workers, balanced. Each class is described by a vector (its mean penultimate features, or its
row of the original model's mean predicted probabilities, which puts classes the model confuses
close together). Balanced k-means alternates an optimal assignment of classes to G equal-capacity
slots (scipy's linear_sum_assignment) with centroid updates.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from weft.serve.errors import ServeError


def check_groups(groups: int, num_classes: int) -> None:
    if not 1 <= groups <= num_classes:
        raise ServeError(f"groups={groups}: must be between 1 and the model's {num_classes} classes")


def balanced_kmeans(vectors: np.ndarray, groups: int, seed: int = 0, iters: int = 50) -> list[list[int]]:
    """Partition the rows of `vectors` into `groups` sets whose sizes differ by at most one.

    Returns the sets as sorted lists of row indices, ordered by their smallest member.
    """
    v = np.asarray(vectors, dtype=np.float64)
    n = len(v)
    check_groups(groups, n)
    if groups == n:
        return [[i] for i in range(n)]
    if groups == 1:
        return [list(range(n))]
    caps = [n // groups + (1 if g < n % groups else 0) for g in range(groups)]
    slot_group = np.repeat(np.arange(groups), caps)
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(5):  # restarts from k-means++-style seeds
        centers = v[_seeds(v, groups, rng)]
        assign = None
        for _ in range(iters):
            cost = ((v[:, None, :] - centers[None, :, :]) ** 2).sum(-1)  # [n, groups]
            rows, cols = linear_sum_assignment(cost[:, slot_group])
            new = slot_group[cols[np.argsort(rows)]]
            if assign is not None and np.array_equal(new, assign):
                break
            assign = new
            centers = np.stack([v[assign == g].mean(0) for g in range(groups)])
        total = ((v - centers[assign]) ** 2).sum()
        if total < best_cost - 1e-12:
            best, best_cost = assign, total
    sets = [sorted(np.flatnonzero(best == g).tolist()) for g in range(groups)]
    return sorted(sets, key=lambda s: s[0])


def _seeds(v: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    chosen = [int(rng.integers(len(v)))]
    for _ in range(k - 1):
        d = ((v[:, None, :] - v[chosen][None]) ** 2).sum(-1).min(1)
        p = d / d.sum() if d.sum() > 0 else np.full(len(v), 1 / len(v))
        chosen.append(int(rng.choice(len(v), p=p)))
    return chosen
