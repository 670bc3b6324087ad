"""Policies as Gavel's simulator computes them (``semantics="gavel"``).

Where Gavel's code (stanford-futuredata/gavel at c4fa400, ``scheduler/policies/``)
computes an allocation differently from weft's policy of the same idea, the
flavour here does what Gavel does, so that ``gavel_sim`` can be checked job by
job against Gavel's own results:

* ``fifo`` (Gavel ``FIFOPolicy``, base mode; weft ``fifo_agnostic``): jobs keep
  their type across re-solves; a finished job's type goes to the head of the
  queue; a new job draws a random index among the types with room, but is
  assigned the *last* type of the candidate walk (k80, p100, v100 sorted), i.e.
  V100 whenever V100 is still listed, even when it is full. The random draw
  only decides which type leaves the list when the assigned type's free count
  reaches exactly 0.
* ``fifo_perf`` (weft ``fifo``): the allocation is rebuilt in arrival order,
  each job on its fastest type with room; the walk stops at the first job that
  fits nowhere.
* ``finish_time_fairness_perf``: ``rho = (elapsed + rem/eff) / (C + rem/iso)``
  where ``C`` accumulates the isolated-equivalent time of the progress made so
  far (``(rem_before - rem_now) / iso_before`` at every re-solve) instead of
  weft's elapsed time.
* ``min_total_duration_perf`` (weft ``min_makespan``): bisection on T from 100 s
  to 1e6 s until within 5%; the allocation is a feasible point at that T.
* LAS (``max_min_fairness[_perf]``): weft's max-min LP; the agnostic one sees
  throughput 1.0 on every type, including types the job cannot run on.

Each flavour also says how Gavel's mechanism treats it: ``shuffle`` (the type
order is shuffled every round: policy names without ``Perf``/``Packing``) and
``fifo`` (zero-priority jobs are never placed).
"""

from __future__ import annotations

import random

import numpy as np
import scipy.sparse as sp

from weft.cluster.model import ClusterError
from weft.cluster.policies._center import Center, ftf_central
from weft.cluster.policies._lp import LPBlocks, fill_max_sum, lp_feasible
from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.policies.fifo import Fifo
from weft.cluster.policies.finish_time_fairness import FinishTimeFairness
from weft.cluster.policies.max_min_fairness import MaxMinFairness
from weft.cluster.policies.min_makespan import MinMakespan
from weft.cluster.policies.pop import Pop
from weft.cluster.problem import Problem
from weft.errors import PlanError


class GavelFlavor:
    """``allocate(prob, ids) -> X`` (n x k over ``prob.types``) as Gavel's policy would."""

    gavel_name = "?"
    shuffle = False
    fifo = False
    central = True
    lp_solver = "center"

    def __init__(self, policy: SchedulingPolicy):
        self.policy = policy

    @property
    def cvx(self) -> bool:
        """Gavel's problem through cvxpy (``lp_solver`` ecos / scs) instead of weft's solver."""
        return self.lp_solver != "center"

    def allocate(self, prob: Problem, ids: list[int]) -> np.ndarray:
        return self.policy.solve(prob).X


class LasFlavor(GavelFlavor):
    def __init__(self, policy: MaxMinFairness):
        super().__init__(policy)
        self.shuffle = not policy.aware
        self.gavel_name = "max_min_fairness" + ("_perf" if policy.aware else "")

    def allocate(self, prob, ids):
        """Gavel's LP: max t s.t. t <= sum_j T[m,j] s_m / (w_m P_m) X[m,j], X >= 0, time
        share <= 1, capacity; P_m the job's throughput under the proportional split.
        Solved to its central point (what ECOS returns), not to a vertex; or, with
        ``lp_solver="ecos"``, by cvxpy + ECOS as Gavel states it (``gavel_cvx``)."""
        if self.cvx:
            from weft.cluster.gavel_cvx import las_cvx
            return las_cvx(prob.T, prob.scale, prob.weight, prob.counts, prob.types, self.policy.aware,
                           self.lp_solver.upper())
        T = prob.T if self.policy.aware else np.ones_like(prob.T)   # agnostic: every throughput 1.0
        if not self.central:
            return self.policy.solve(Problem(T, prob.scale, prob.counts, prob.weight, types=prob.types)).X
        prop = T @ (prob.counts / prob.counts.sum())
        coef = T * (prob.scale / (prob.weight * np.maximum(prop, 1e-300)))[:, None]
        n, k = T.shape
        alpha = 0.5 * min(1.0 / k, float((prob.counts / prob.scale.sum()).min()))
        X0 = np.full((n, k), alpha)
        t0 = 0.5 * float((coef * alpha).sum(axis=1).min())
        center = Center(np.stack([np.ones((n, k)), -coef]), np.stack([np.ones(n), np.zeros(n)]),
                        prob.scale, prob.counts, b=np.stack([np.zeros(n), np.ones(n)]))
        return center.maximize_t(X0, t0)[0]


class FifoFlavor(GavelFlavor):
    fifo = True

    def __init__(self, policy: Fifo, seed: int):
        super().__init__(policy)
        self.base = not policy.aware
        self.shuffle = self.base
        self.gavel_name = "fifo" if self.base else "fifo_perf"
        self.rng = random.Random(seed)   # FIFOPolicy(seed=seed): random.Random().seed(seed)
        self.assigned: dict[int, int] = {}   # job id -> type index (base mode keeps it across solves)

    def allocate(self, prob, ids):
        k, types = prob.k, prob.types
        row = {i: m for m, i in enumerate(ids)}
        avail = {j: float(prob.counts[j]) for j in range(k)}
        if not self.base:
            self.assigned = {}
        queue = [i for i in sorted(ids) if i not in self.assigned]
        for done_or_held in sorted(self.assigned):
            j = self.assigned[done_or_held]
            if done_or_held not in row:                    # finished: its type goes to the head
                if queue:
                    head = queue[0]
                    if prob.scale[row[head]] <= avail[j] and prob.T[row[head], j] > 0:
                        queue.pop(0)
                        self.assigned[head] = j
                        avail[j] -= prob.scale[row[head]]
                del self.assigned[done_or_held]
            else:
                avail[j] -= prob.scale[row[done_or_held]]
        listed = sorted((j for j in range(k) if avail[j] > 0), key=lambda j: types[j])
        while queue and listed:
            i = queue.pop(0)
            m, s = row[i], prob.scale[row[i]]
            cand = [(pos, j) for pos, j in enumerate(listed) if avail[j] >= s]
            if not cand:
                break
            if self.base:
                pick = self.rng.randrange(len(cand))
                j = listed[-1]            # Gavel assigns its stale loop variable: the last listed type
            else:
                pick = max(range(len(cand)), key=lambda q: (prob.T[m, cand[q][1]], -q))
                j = cand[pick][1]
            if prob.T[m, j] > 0:
                self.assigned[i] = j
                avail[j] -= s
                if avail[j] == 0:
                    listed.pop(cand[pick][0])
        X = np.zeros((prob.n, k))
        for i, j in self.assigned.items():
            X[row[i], j] = 1.0
        return X


class FtfFlavor(GavelFlavor):
    gavel_name = "finish_time_fairness_perf"

    def __init__(self, policy: FinishTimeFairness):
        super().__init__(policy)
        self.cum: dict[int, float] = {}
        self.prev: dict[int, tuple[float, float]] = {}    # id -> (remaining, isolated throughput)

    def allocate(self, prob, ids):
        if self.cvx:
            from weft.cluster.gavel_cvx import ftf_cvx, isolated_cvx
            iso = isolated_cvx(prob.T, prob.scale, prob.counts, prob.types)    # (n, 1), Gavel's arithmetic
        else:
            iso = isolated_throughput(prob)
        for m, i in enumerate(ids):
            self.cum.setdefault(i, 0.0)
            if i in self.prev:
                rem0, iso0 = self.prev[i]
                self.cum[i] += (rem0 - prob.remaining[m]) / iso0
        self.prev = {i: (float(prob.remaining[m]), float(np.ravel(iso[m])[0])) for m, i in enumerate(ids)}
        if self.cvx:
            return ftf_cvx(prob.T, prob.scale, prob.counts, prob.types, prob.elapsed, prob.remaining,
                           [self.cum[i] for i in ids], iso, self.lp_solver.upper())
        base = np.array([self.cum[i] for i in ids]) + prob.remaining / np.maximum(iso, 1e-300)
        if self.central:
            return ftf_central(prob.T, prob.scale, prob.counts, prob.elapsed, prob.remaining, base)
        return self.policy.solve(prob, baseline=base).X


class MinDurationFlavor(GavelFlavor):
    gavel_name = "min_total_duration_perf"

    def allocate(self, prob, ids):
        if self.cvx:
            from weft.cluster.gavel_cvx import min_duration_cvx
            return min_duration_cvx(prob.T, prob.scale, prob.counts, prob.types, prob.remaining,
                                    self.lp_solver.upper())
        blocks = LPBlocks(prob)
        A0, b0 = blocks.base_constraints()
        A = sp.vstack([A0, -blocks.eff]).tocsr()
        c = np.zeros(blocks.nv)
        rem = prob.remaining

        def feasible(T):
            return lp_feasible(c, A, np.concatenate([b0, -rem / T]), blocks.bounds()) is not None

        lo, hi, last_hi, found = 100.0, 1e6, 1e6, None
        while found is None:
            while 1.05 * lo < hi:
                mid = (lo + hi) / 2.0
                if feasible(mid):
                    found, hi = mid, mid
                else:
                    lo = mid
            lo, hi, last_hi = last_hi, last_hi * 10.0, last_hi * 10.0
        if not self.central:
            v = fill_max_sum(blocks, np.maximum(rem / found, 1e-12), np.ones(prob.n), self.name)
            return blocks.allocation(v, 0.0).X
        # Gavel keeps the point its solver returns for "Maximize(1)": with no
        # objective, an interior-point method ends at the analytic center.
        n, k = prob.T.shape
        center = Center(np.stack([np.ones((n, k)), -prob.T]), np.stack([np.ones(n), -rem / found]),
                        prob.scale, prob.counts)
        try:
            return center.solve()
        except PlanError:       # no interior (the bisection's T is on the boundary): any feasible point
            v = fill_max_sum(blocks, np.maximum(rem / found, 1e-12), np.ones(prob.n), self.name)
            return blocks.allocation(v, 0.0).X

    @property
    def name(self):
        return self.gavel_name


def isolated_throughput(prob: Problem) -> np.ndarray:
    """Gavel's ``IsolatedPolicy``: a 1/n share of every type, capped at full time."""
    frac = np.minimum(1.0, prob.counts.sum() / (max(prob.n, 1) * prob.scale))
    share = prob.counts / max(prob.counts.sum(), 1e-12)
    return (prob.T @ share) * frac


def flavor_for(policy: SchedulingPolicy, seed: int = 0, central: bool = True, lp_solver: str = "center") -> GavelFlavor:
    """The Gavel flavour of a weft policy (a fresh one per simulation: some keep state).
    ``central=False``: LAS and min_total_duration take weft's vertex solutions instead.
    ``lp_solver="ecos"`` (or ``"scs"``): LAS, finish-time fairness and
    min_total_duration solve Gavel's problems with cvxpy + that solver (``gavel_cvx``)."""
    from weft.cluster.gavel_cvx import LP_SOLVERS

    if lp_solver not in LP_SOLVERS:
        raise ClusterError(f"lp_solver {lp_solver!r}: choose from {', '.join(LP_SOLVERS)}")
    if lp_solver != "center" and not central:
        raise ClusterError(f"lp_solver {lp_solver!r} with the 'center' ablation: the ablation "
                           "replaces the solver by a HiGHS vertex; ask for one or the other")
    if policy.packed:
        raise ClusterError(f"policy {policy.name}: space sharing is not supported with semantics='gavel'")
    if isinstance(policy, Pop):
        raise ClusterError(f"policy {policy.name}: POP is not supported with semantics='gavel'")
    if isinstance(policy, Fifo):
        return FifoFlavor(policy, seed)
    lp = next((cls for kind, cls in ((MaxMinFairness, LasFlavor), (FinishTimeFairness, FtfFlavor),
                                     (MinMakespan, MinDurationFlavor)) if isinstance(policy, kind)),
              None)
    if lp is not None:  # the policies whose LP the options choose how to solve
        flavor = lp(policy)
        flavor.central, flavor.lp_solver = central, lp_solver
        return flavor
    flavor = GavelFlavor(policy)
    flavor.gavel_name = policy.name
    flavor.shuffle = not getattr(policy, "aware", True)
    return flavor


GAVEL_NAMES = {"max_min_fairness": "max_min_fairness_agnostic", "max_min_fairness_perf": "max_min_fairness",
               "fifo": "fifo_agnostic", "fifo_perf": "fifo", "finish_time_fairness_perf": "finish_time_fairness",
               "min_total_duration_perf": "min_makespan"}


def weft_policy_name(gavel_name: str) -> str:
    """weft's policy for one of Gavel's policy names (as in its reference results)."""
    if gavel_name not in GAVEL_NAMES:
        raise ClusterError(f"Gavel policy {gavel_name!r} has no weft counterpart; known: {', '.join(GAVEL_NAMES)}")
    return GAVEL_NAMES[gavel_name]


__all__ = ["GAVEL_NAMES", "GavelFlavor", "flavor_for", "isolated_throughput", "weft_policy_name"]
