"""Gavel's policy LPs solved the way Gavel solves them: cvxpy + ECOS (optional).

``simulate(..., semantics="gavel", lp_solver="ecos")`` uses this module for
Gavel's LAS, finish-time fairness and min_total_duration policies instead of
weft's own central-point solver (``policies/_center.py``); ``lp_solver="scs"``
uses SCS, as Gavel's ``--solver SCS``. Gavel (stanford-futuredata/gavel at c4fa400,
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
The finish-time fairness and min_total_duration problems are stated the same
way after Gavel's ``finish_time_fairness.py`` and ``min_total_duration.py``.
cvxpy and ecos are imported only when such a solver is asked for
(``pip install 'weft[gavel]'``).
"""

from __future__ import annotations

import numpy as np

from weft.cluster.model import ClusterError

LP_SOLVERS = ("center", "ecos", "scs")    # "center": weft's own solver; the others through cvxpy


def _cvxpy(solver: str):
    try:
        import cvxpy
    except ImportError as exc:
        raise ClusterError(f"lp_solver={solver.lower()!r} needs cvxpy and ecos (pip install 'weft[gavel]'): "
                           f"{exc}") from None
    if solver not in cvxpy.installed_solvers():
        raise ClusterError(f"lp_solver={solver.lower()!r}: cvxpy is installed but {solver} is not "
                           f"(installed: {', '.join(cvxpy.installed_solvers())})")
    return cvxpy


def _sorted_types(T: np.ndarray, counts: np.ndarray, types: list[str]):
    """Gavel's column order (sorted worker types) and its ``cluster_spec`` counts."""
    order = sorted(range(T.shape[1]), key=lambda j: types[j])
    cs = [int(c) if float(c).is_integer() else float(c) for c in np.asarray(counts)[order]]
    return order, np.asarray(T, float)[:, order], cs


def _unsort(x: np.ndarray, order: list[int]) -> np.ndarray:
    out = np.empty_like(x)
    out[:, order] = x
    return out


def _base(cp, x, S, cs):
    """Gavel's ``Policy.get_base_constraints``."""
    return [x >= 0, cp.sum(cp.multiply(S, x), axis=0) <= cs, cp.sum(x, axis=1) <= 1]


def _solve(cp, problem, solver: str, what: str) -> str:
    try:
        problem.solve(solver=solver)
    except cp.error.SolverError as exc:
        raise ClusterError(f"{what}: {solver} failed ({exc}); Gavel's own run stops here too") from None
    return problem.status


def _scale_array(scale: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.asarray(scale, float).reshape(-1, 1), k, axis=1)


def max_min_x(coef: np.ndarray, scale: np.ndarray, counts: list, what: str, solver: str = "ECOS") -> np.ndarray:
    """Gavel's max-min LP for ``coef`` (n x k, worker types in sorted order);
    returns ``x`` clipped to [0, 1] as Gavel does."""
    cp = _cvxpy(solver)
    n, k = coef.shape
    x = cp.Variable((n, k))
    objective = cp.Maximize(cp.min(cp.sum(cp.multiply(coef, x), axis=1)))
    problem = cp.Problem(objective, _base(cp, x, _scale_array(scale, k), counts))
    status = _solve(cp, problem, solver, what)
    if x.value is None:
        raise ClusterError(f"{what}: {solver} returned no solution (status {status})")
    return x.value.clip(min=0.0).clip(max=1.0)


def las_cvx(T: np.ndarray, scale: np.ndarray, weight: np.ndarray, counts: np.ndarray, types: list[str],
            aware: bool, solver: str = "ECOS") -> np.ndarray:
    """Gavel's ``max_min_fairness[_perf]`` allocation (n x k, columns in ``types``
    order; rows in the caller's order, which must be sorted by job id as Gavel's)."""
    n, k = T.shape
    order, Ts, cs = _sorted_types(T, counts, types)
    if not aware:
        Ts = np.ones((n, k))                                     # agnostic: every throughput 1.0
    # Gavel's ProportionalPolicy: x[m, j] = count_j / n, scaled so the largest row sums to 1
    x_prop = np.array([[c / n for c in cs] for _ in range(n)])
    x_prop = x_prop / np.sum(x_prop, axis=1).max()
    prop = np.sum(np.multiply(Ts, x_prop), axis=1).reshape((n, 1))
    pw = np.multiply((1.0 / np.asarray(weight, float)).reshape((n, 1)), 1.0 / prop)
    x = max_min_x(np.multiply(Ts * pw, _scale_array(scale, k)), scale, cs,
                  "max_min_fairness" + ("_perf" if aware else "") + f" ({solver})", solver)
    return _unsort(x, order)


def isolated_x(scale: np.ndarray, cs: list, n: int) -> np.ndarray:
    """Gavel's ``IsolatedPolicy``: each type's count split over the n jobs, per
    accelerator of the job, rows scaled down to sum at most 1 (sorted types)."""
    x = np.array([[c / n for c in cs] for _ in range(n)])
    x = x / _scale_array(scale, len(cs))
    per_row = np.sum(x, axis=1)
    return x / np.maximum(per_row, np.ones(per_row.shape))[:, None]


def isolated_cvx(T: np.ndarray, scale: np.ndarray, counts: np.ndarray, types: list[str]) -> np.ndarray:
    """Each job's throughput under ``isolated_x``, shape (n, 1) as Gavel keeps it."""
    _, Ts, cs = _sorted_types(T, counts, types)
    return np.sum(np.multiply(Ts, isolated_x(scale, cs, T.shape[0])), axis=1).reshape((T.shape[0], 1))


def ftf_cvx(T, scale, counts, types, elapsed, remaining, cum, iso, solver: str = "ECOS") -> np.ndarray:
    """Gavel's ``finish_time_fairness_perf``: minimise the largest
    ``(elapsed + rem / (T.x)) / (cum + rem / iso)``; ``cum`` is the isolated-equivalent
    time of the progress so far, ``iso`` as from ``isolated_cvx``. With no solution
    (Gavel: ``x.value is None``) the isolated split."""
    cp = _cvxpy(solver)
    n, k = T.shape
    order, Ts, cs = _sorted_types(T, counts, types)
    x = cp.Variable((n, k))
    fractions = []
    for i in range(n):
        throughput = cp.sum(cp.multiply(Ts[i], x[i]))
        isolated_time = cum[i] + remaining[i] / iso[i]
        allocated_time = elapsed[i] + remaining[i] * cp.inv_pos(throughput)
        fractions.append(allocated_time / isolated_time)
    objective = cp.Minimize(fractions[0] if n == 1 else cp.maximum(*fractions))
    problem = cp.Problem(objective, _base(cp, x, _scale_array(scale, k), cs))
    _solve(cp, problem, solver, f"finish_time_fairness_perf ({solver})")
    if x.value is None:
        return _unsort(isolated_x(scale, cs, n), order)
    return _unsort(x.value.clip(min=0.0).clip(max=1.0), order)


def min_duration_cvx(T, scale, counts, types, remaining, solver: str = "ECOS") -> np.ndarray:
    """Gavel's ``min_total_duration_perf``: bisection on the makespan bound from
    100 s to 1e6 s (then tenfold) until within 5%, each bound a feasibility
    problem (``Maximize(1)``); the solver's point at the last feasible bound."""
    cp = _cvxpy(solver)
    n, k = T.shape
    order, Ts, cs = _sorted_types(T, counts, types)
    S = _scale_array(scale, k)
    rem = np.asarray(remaining)

    def attempt(bound):
        x = cp.Variable((n, k))
        constraints = _base(cp, x, S, cs) + [cp.sum(cp.multiply(Ts, x), axis=1) >= rem / bound]
        return _solve(cp, cp.Problem(cp.Maximize(1), constraints), solver, f"min_total_duration_perf ({solver})"), x

    hi, lo, last_hi, found = 1000000.0, 100.0, 1000000.0, None
    while found is None:
        while 1.05 * lo < hi:
            mid = (lo + hi) / 2.0
            status, x = attempt(mid)
            if status == "optimal":
                found, hi = x, mid
            else:
                lo = mid
        hi, lo, last_hi = last_hi * 10.0, last_hi, last_hi * 10.0
        if last_hi > 1e30:
            raise ClusterError(f"min_total_duration_perf ({solver}): no feasible makespan bound up to 1e30 s")
    return _unsort(found.value.clip(min=0.0).clip(max=1.0), order)


__all__ = ["LP_SOLVERS", "ftf_cvx", "isolated_cvx", "isolated_x", "las_cvx", "max_min_x", "min_duration_cvx"]
