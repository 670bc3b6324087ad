"""Gavel's LAS LPs solved the way Gavel solves them: cvxpy + ECOS (optional).

``simulate(..., semantics="gavel", lp_solver="ecos")`` uses this module for the
max-min fairness (LAS) policies instead of weft's own central-point solver
(``policies/_center.py``). Gavel (stanford-futuredata/gavel at c4fa400,
``scheduler/policies/max_min_fairness.py`` and ``policy.py``) states each LP as a
cvxpy problem over ``x`` (jobs sorted by id x worker types sorted by name):

    maximise  min_m  sum_j C[m, j] x[m, j]
    s.t.      x >= 0,   sum_m scale_m x[m, j] <= count_j,   sum_j x[m, j] <= 1

with ``C = T * scale / (w * P)``, ``P_m`` job m's throughput under Gavel's
``ProportionalPolicy`` split (each type's count over the jobs, scaled so that the
largest row sums to 1). Agnostic (``max_min_fairness``): ``T = 1`` on every type,
including types the job cannot run on.

The LP is stated here in the same shape (same variable and constraint order),
so that ECOS sees the same matrices: where jobs are interchangeable, which of
them Gavel's mechanism runs first is decided by the last digits of ECOS's
solution, and only the same solver on the same input repeats that order.
cvxpy and ecos are imported only when this solver is asked for
(``pip install 'weft[gavel]'``).
"""

from __future__ import annotations

import numpy as np

from weft.cluster.model import ClusterError

LP_SOLVERS = ("center", "ecos")


def _cvxpy():
    try:
        import cvxpy
    except ImportError as exc:
        raise ClusterError(f"lp_solver='ecos' needs cvxpy and ecos (pip install 'weft[gavel]'): {exc}") from None
    if "ECOS" not in cvxpy.installed_solvers():
        raise ClusterError("lp_solver='ecos': cvxpy is installed but ECOS is not (pip install ecos)")
    return cvxpy


def max_min_x(coef: np.ndarray, scale: np.ndarray, counts: np.ndarray, what: str) -> np.ndarray:
    """Gavel's max-min LP for ``coef`` (n x k, worker types in sorted order),
    solved by ECOS; returns ``x`` clipped to [0, 1] as Gavel does."""
    cp = _cvxpy()
    n, k = coef.shape
    S = np.repeat(np.asarray(scale, float).reshape(n, 1), k, axis=1)
    x = cp.Variable((n, k))
    objective = cp.Maximize(cp.min(cp.sum(cp.multiply(coef, x), axis=1)))
    constraints = [x >= 0, cp.sum(cp.multiply(S, x), axis=0) <= [c for c in counts], cp.sum(x, axis=1) <= 1]
    prob = cp.Problem(objective, constraints)
    try:
        prob.solve(solver="ECOS")
    except cp.error.SolverError as exc:
        raise ClusterError(f"{what}: ECOS failed ({exc})") from None
    if x.value is None:
        raise ClusterError(f"{what}: ECOS returned no solution (status {prob.status})")
    return x.value.clip(min=0.0).clip(max=1.0)


def las_ecos(T: np.ndarray, scale: np.ndarray, weight: np.ndarray, counts: np.ndarray, types: list[str],
             aware: bool) -> np.ndarray:
    """Gavel's ``max_min_fairness[_perf]`` allocation (n x k, columns in ``types``
    order; rows in the caller's order, which must be sorted by job id as Gavel's)."""
    n, k = T.shape
    order = sorted(range(k), key=lambda j: types[j])            # Gavel: sorted(worker_types)
    Ts = np.asarray(T, float)[:, order] if aware else np.ones((n, k))   # agnostic: every throughput 1.0
    cs = [int(c) if float(c).is_integer() else float(c) for c in np.asarray(counts)[order]]
    # Gavel's ProportionalPolicy: x[m, j] = count_j / n, scaled so the largest row sums to 1
    x_prop = np.array([[c / n for c in cs] for _ in range(n)])
    x_prop = x_prop / np.sum(x_prop, axis=1).max()
    prop = np.sum(np.multiply(Ts, x_prop), axis=1).reshape((n, 1))
    pw = np.multiply((1.0 / np.asarray(weight, float)).reshape((n, 1)), 1.0 / prop)
    S = np.repeat(np.asarray(scale, float).reshape(n, 1), k, axis=1)
    x = max_min_x(np.multiply(Ts * pw, S), scale, cs, "max_min_fairness" + ("_perf" if aware else "") + " (ECOS)")
    out = np.empty_like(x)
    out[:, order] = x
    return out


__all__ = ["LP_SOLVERS", "las_ecos", "max_min_x"]
