"""Launch offsets for co-located waves or jobs: the smallest combined memory peak.

Profiles are arrays over one period split into ``n`` bins (`MemoryProfile.bins`: each bin's
maximum). Wave i launched ``offsets[i]`` bins late holds ``p_i[(t - offsets[i]) mod n]`` at
bin t, so the waves together need

    combined_peak(profiles, offsets) = max_t  sum_i  p_i[(t - o_i) mod n]

Gang scheduling launches every wave at once (all offsets 0). `plan_offsets` finds offsets
with the smallest combined peak by exact search over the ``n`` bins: the first wave stays at
0 (shifting every wave alike changes nothing), two waves try all n offsets at once
(vectorised), more waves run a depth-first search from an incumbent (the waves spread evenly),
pruned by a lower bound (the partial sum's peak plus each remaining wave's minimum), stopped
early when it reaches the average (no offsets beat it), and for identical profiles reduced by
symmetry (their offsets in increasing order). `max_waves` and `max_batch` answer what fits a memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Sequence

import numpy as np

from weft.errors import PlanError


@dataclass(frozen=True)
class OffsetPlan:
    offsets: tuple[int, ...]     # bins each wave starts after the first
    peak: float                  # combined peak with these offsets
    gang_peak: float             # combined peak with every offset 0
    bins: int

    @property
    def ratio(self) -> float:
        """Combined peak over the gang-scheduled peak (1.0: offsets gain nothing)."""
        return self.peak / self.gang_peak if self.gang_peak > 0 else 1.0

    @property
    def fractions(self) -> tuple[float, ...]:
        """Offsets as fractions of the period."""
        return tuple(o / self.bins for o in self.offsets)

    def to_dict(self) -> dict:
        return {"offsets_bins": list(self.offsets), "offsets_fraction": list(self.fractions),
                "bins": self.bins, "combined_peak_bytes": self.peak,
                "gang_peak_bytes": self.gang_peak, "ratio": self.ratio}


def _check(profiles: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(profiles) < 1:
        raise PlanError("need at least one memory profile")
    arrs = [np.asarray(p, float) for p in profiles]
    n = len(arrs[0])
    for i, a in enumerate(arrs):
        if a.ndim != 1 or len(a) != n or n == 0:
            raise PlanError(f"profile {i}: expected {n} bins like profile 0, got shape {a.shape}")
        if not np.all(np.isfinite(a)) or (a < 0).any():
            raise PlanError(f"profile {i}: bytes must be finite and >= 0")
    return arrs


def combined(profiles: Sequence[np.ndarray], offsets: Sequence[int]) -> np.ndarray:
    """Bytes held at each bin by all waves, wave i launched `offsets[i]` bins late."""
    arrs = _check(profiles)
    if len(offsets) != len(arrs):
        raise PlanError(f"{len(offsets)} offsets for {len(arrs)} profiles")
    return sum(np.roll(a, int(o)) for a, o in zip(arrs, offsets))


def combined_peak(profiles: Sequence[np.ndarray], offsets: Sequence[int]) -> float:
    return float(combined(profiles, offsets).max())


def _shifts(a: np.ndarray) -> np.ndarray:
    """(n, n): row o is `a` launched o bins late, np.roll(a, o)."""
    n = len(a)
    idx = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n
    return a[idx]


def plan_offsets(profiles: Sequence[np.ndarray], max_calls: int = 200_000) -> OffsetPlan:
    """Offsets (first wave at 0) with the smallest combined peak (exact; among equal peaks,
    the first found). Raises PlanError if the search needs more than `max_calls` expansions
    (each tries every offset of one wave at once; use fewer bins)."""
    arrs = _check(profiles)
    n, k = len(arrs[0]), len(arrs)
    gang = float(sum(arrs).max())
    if k == 1:
        return OffsetPlan((0,), gang, gang, n)
    if k == 2:
        peaks = (arrs[0][None, :] + _shifts(arrs[1])).max(axis=1)
        o = int(np.argmin(peaks))
        return OffsetPlan((0, o), float(peaks[o]), gang, n)
    shifted = [_shifts(a) for a in arrs]
    rest_min = [float(sum(a.min() for a in arrs[i:])) for i in range(k)] + [0.0]
    floor = float(sum(a.mean() for a in arrs))  # no offsets do better than the average
    same = [i > 0 and np.array_equal(arrs[i], arrs[i - 1]) for i in range(k)]
    even = tuple(round(i * n / k) % n for i in range(k))  # the incumbent: evenly spread
    best = [combined_peak(arrs, even), even]
    calls = [0]

    def search(i: int, partial: np.ndarray, chosen: tuple[int, ...]) -> None:
        calls[0] += 1
        if calls[0] > max_calls:
            raise PlanError(f"offset search over {n} bins and {k} waves needs more than "
                            f"{max_calls} expansions; use fewer bins")
        peaks = (partial[None, :] + shifted[i]).max(axis=1)  # every offset of wave i at once
        lo = chosen[-1] if same[i] else 0
        for o in np.argsort(peaks[lo:], kind="stable") + lo:
            if peaks[o] + rest_min[i + 1] >= best[0] or best[0] <= floor:
                return  # sorted: no later offset can do better
            if i == k - 1:
                best[0], best[1] = float(peaks[o]), chosen + (int(o),)
                return
            search(i + 1, partial + shifted[i][o], chosen + (int(o),))

    if best[0] > floor:
        search(1, arrs[0].copy(), (0,))
    return OffsetPlan(best[1], combined_peak(arrs, best[1]), gang, n)


def coarsen(profile: np.ndarray, n: int) -> np.ndarray:
    """`profile` on `n` bins (each the maximum of the fine bins it covers): never less memory,
    so what fits coarsened fits."""
    a = np.asarray(profile, float)
    if n >= len(a):
        return a
    edges = np.linspace(0, len(a), n + 1).round().astype(int)
    return np.maximum.reduceat(a, edges[:-1])


def max_waves(profile: np.ndarray, budget: float, limit: int = 4,
              bins: int = 32) -> tuple[int, OffsetPlan | None]:
    """The most copies of `profile` (waves of one job), up to `limit`, that fit `budget` bytes
    with planned offsets, and their plan (0 and None when not even one fits). Three or more
    waves are planned on the profile coarsened to `bins` bins (`coarsen`: conservative)."""
    best: tuple[int, OffsetPlan | None] = (0, None)
    for k in range(1, limit + 1):
        p = profile if k <= 2 else coarsen(profile, bins)
        plan = plan_offsets([p] * k)
        if plan.peak > budget:
            break
        best = (k, plan)
    return best


def max_batch(profile_at: Callable[[int], np.ndarray], budget: float, waves: int = 1,
              offsets: bool = True, hi: int = 1 << 20) -> int:
    """The largest batch b (per wave) for which `waves` waves of `profile_at(b)` fit `budget`
    bytes, launched with planned offsets (or all at once when `offsets` is False); 0 when
    none does. Memory is assumed not to shrink as the batch grows (binary search)."""
    def fits(b: int) -> bool:
        p = np.asarray(profile_at(b), float)
        if waves == 1:
            return float(p.max()) <= budget
        if not offsets:
            return float(p.max()) * waves <= budget
        return plan_offsets([p] * waves).peak <= budget

    if not fits(1):
        return 0
    lo, top = 1, 2
    while top <= hi and fits(top):
        lo, top = top, top * 2
    top = min(top, hi + 1)
    while top - lo > 1:  # fits(lo), not fits(top)
        mid = (lo + top) // 2
        lo, top = (mid, top) if fits(mid) else (lo, mid)
    return lo


class LinearMemory:
    """Binned profiles at two batch sizes, interpolated bin by bin (activations grow linearly
    with the batch; parameters, gradients and optimizer state do not): `self(b)`."""

    def __init__(self, b1: int, p1: np.ndarray, b2: int, p2: np.ndarray):
        if not 0 < b1 < b2:
            raise PlanError(f"LinearMemory needs two batch sizes 0 < b1 < b2, got {b1}, {b2}")
        self.p1, self.p2 = _check([p1, p2])
        self.b1, self.b2 = b1, b2
        self.slope = (self.p2 - self.p1) / (b2 - b1)

    def __call__(self, b: int) -> np.ndarray:
        return np.maximum(self.p1 + (b - self.b1) * self.slope, 0.0)
