"""Policies: feasible allocations whose objective matches an independent dense solve."""

import numpy as np
import pytest
from scipy.optimize import linprog

from weft.cluster.policies import get_policy, policy_names
from weft.cluster.policies.finish_time_fairness import fair_throughput
from weft.cluster.policies.min_cost import needed_throughput
from weft.cluster.problem import Problem


def small_problem(seed, n=5, k=3, pairs=False):
    rng = np.random.default_rng(seed)
    T = rng.uniform(0.5, 10.0, (n, k))
    T[rng.random((n, k)) < 0.15] = 0.0
    T[:, 0] = np.maximum(T[:, 0], 0.5)
    scale = rng.choice([1, 1, 2], n)
    counts = rng.integers(1, 4, k).astype(float)
    kw = dict(weight=rng.choice([1.0, 2.0], n), remaining=rng.uniform(1e3, 1e4, n),
              elapsed=rng.uniform(0, 500, n), arrival=rng.permutation(n).astype(float),
              prices=np.array([3.0, 1.5, 0.9][:k]))
    deadline = np.full(n, np.inf)
    deadline[0] = 5000.0
    kw["deadline"] = deadline
    if pairs:
        P = [(a, b) for a in range(n) for b in range(a + 1, n) if scale[a] == scale[b]][:6]
        TP = np.stack([T[[a, b]].T * rng.uniform(0.4, 0.8, (k, 2)) for a, b in P])
        kw["pairs"], kw["TP"] = np.array(P), TP
    return Problem(T, scale, counts, **kw)


def dense_blocks(p, packed):
    """Independent dense formulation: columns X (n*k) then Y (P*k)."""
    n, k = p.T.shape
    P = len(p.pairs) if packed else 0
    nv = n * k + P * k
    eff, share, cap = np.zeros((n, nv)), np.zeros((n, nv)), np.zeros((k, nv))
    ub = np.zeros(nv)
    for m in range(n):
        for j in range(k):
            c = m * k + j
            eff[m, c], share[m, c], cap[j, c] = p.T[m, j], 1, p.scale[m]
            ub[c] = 1.0 if p.T[m, j] > 0 else 0.0
    for q in range(P):
        a, b = p.pairs[q]
        for j in range(k):
            c = n * k + q * k + j
            eff[a, c], eff[b, c] = p.TP[q, j]
            share[a, c] = share[b, c] = 1
            cap[j, c] = p.scale[a]
            ub[c] = 1.0 if p.TP[q, j].min() > 0 else 0.0
    return eff, share, cap, ub


def dense_maxmin(p, T, norm, packed=False):
    q = Problem(T, p.scale, p.counts, pairs=p.pairs, TP=p.TP)
    eff, share, cap, ub = dense_blocks(q, packed)
    n, nv = eff.shape
    A = np.vstack([np.hstack([share, np.zeros((n, 1))]), np.hstack([cap, np.zeros((len(cap), 1))]),
                   np.hstack([-eff / norm[:, None], np.ones((n, 1))])])
    b = np.concatenate([np.ones(n), p.counts, np.zeros(n)])
    c = np.zeros(nv + 1)
    c[-1] = -1
    res = linprog(c, A_ub=A, b_ub=b, bounds=[(0, u) for u in ub] + [(0, None)], method="highs-ipm")
    assert res.status == 0
    return -res.fun


def dense_min_makespan(p):
    eff, share, cap, ub = dense_blocks(p, False)
    n, nv = eff.shape
    A = np.vstack([np.hstack([share, np.zeros((n, 1))]), np.hstack([cap, np.zeros((len(cap), 1))]),
                   np.hstack([-eff / p.remaining[:, None], np.ones((n, 1))])])
    c = np.zeros(nv + 1)
    c[-1] = -1
    res = linprog(c, A_ub=A, b_ub=np.concatenate([np.ones(n), p.counts, np.zeros(n)]),
                  bounds=[(0, u) for u in ub] + [(0, None)], method="highs-ipm")
    return 1.0 / -res.fun


def dense_max_throughput(p):
    eff, share, cap, ub = dense_blocks(p, False)
    norm = p.T @ (p.counts / p.counts.sum())
    res = linprog(-(eff / norm[:, None]).sum(0), A_ub=np.vstack([share, cap]),
                  b_ub=np.concatenate([np.ones(p.n), p.counts]), bounds=[(0, u) for u in ub], method="highs-ipm")
    return -res.fun


def dense_ftf(p):
    """Finish-time fairness by a fine grid over r of dense feasibility LPs."""
    eff, share, cap, ub = dense_blocks(p, False)
    D = p.elapsed + p.remaining / fair_throughput(p)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        r = 0.5 * (lo + hi)
        den = r * D - p.elapsed
        ok = False
        if (den > 0).all():
            res = linprog(np.zeros(eff.shape[1]), A_ub=np.vstack([share, cap, -eff]),
                          b_ub=np.concatenate([np.ones(p.n), p.counts, -p.remaining / den]),
                          bounds=[(0, u) for u in ub], method="highs-ipm")
            ok = res.status == 0
        lo, hi = (lo, r) if ok else (r, hi)
    return hi


def dense_min_cost(p):
    eff, share, cap, ub = dense_blocks(p, False)
    need = needed_throughput(p)
    res = linprog(p.prices @ cap, A_ub=np.vstack([share, cap, -eff]),
                  b_ub=np.concatenate([np.ones(p.n), p.counts, -need]),
                  bounds=[(0, u) for u in ub], method="highs-ipm")
    return res.fun if res.status == 0 else None


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", policy_names())
def test_every_policy_is_feasible(name, seed):
    p = small_problem(seed, pairs=True)
    alloc = get_policy(name).solve(p)
    assert alloc.X.shape == (p.n, p.k)
    assert alloc.feasibility_errors(p) == []
    assert (alloc.X[p.T == 0] <= 1e-9).all()


@pytest.mark.parametrize("seed", range(6))
def test_objectives_equal_independent_solve(seed):
    p = small_problem(seed, pairs=True)
    share = p.counts / p.counts.sum()
    ws = p.weight / p.scale                 # Gavel: scale_m * throughput / w_m
    norm = ws * ws * (p.T @ share)          # aware: over throughput under the agnostic X
    got = get_policy("max_min_fairness").solve(p).objective
    assert got == pytest.approx(dense_maxmin(p, p.T, norm), rel=1e-5)
    Tb = (p.T > 0).astype(float)
    got = get_policy("max_min_fairness_agnostic").solve(p).objective
    assert got == pytest.approx(dense_maxmin(p, Tb, ws * (Tb @ share)), rel=1e-5)
    got = get_policy("max_min_fairness_packed").solve(p).objective
    assert got == pytest.approx(dense_maxmin(p, p.T, norm, packed=True), rel=1e-5)
    assert get_policy("min_makespan").solve(p).objective == pytest.approx(dense_min_makespan(p), rel=1e-5)
    assert get_policy("max_throughput").solve(p).objective == pytest.approx(dense_max_throughput(p), rel=1e-5)
    assert get_policy("finish_time_fairness").solve(p).objective == pytest.approx(dense_ftf(p), rel=1e-3)
    ref = dense_min_cost(p)
    alloc = get_policy("min_cost").solve(p)
    if ref is not None:
        assert alloc.objective == pytest.approx(ref, rel=1e-5)
        assert alloc.extra["shortfall"].max() < 1e-6


@pytest.mark.parametrize("seed", range(10))
def test_aware_las_never_worse_than_agnostic_in_its_objective(seed):
    p = small_problem(seed, n=8)
    aware = get_policy("max_min_fairness")
    agn = get_policy("max_min_fairness_agnostic").solve(p)
    assert aware.solve(p).objective >= aware.evaluate(p, agn) - 1e-7
    packed = get_policy("max_min_fairness_packed").solve(small_problem(seed, n=8, pairs=True))
    assert packed.objective >= aware.solve(small_problem(seed, n=8, pairs=True)).objective - 1e-7


@pytest.mark.parametrize("name", policy_names())
def test_pop_k1_equals_full_solve(name):
    p = small_problem(3, n=12, pairs=True)
    full = get_policy(name).solve(p)
    pop = get_policy(name, pop_k=1).solve(p)
    np.testing.assert_allclose(pop.X, full.X)
    assert pop.objective == pytest.approx(full.objective, nan_ok=True)


def test_pop_k4_feasible_and_close():
    p = small_problem(1, n=400, k=3)
    full = get_policy("max_min_fairness").solve(p)
    pop = get_policy("max_min_fairness", pop_k=4).solve(p)
    assert pop.feasibility_errors(p) == []
    assert pop.objective <= full.objective + 1e-9
    assert pop.objective >= 0.8 * full.objective


def test_fifo_serves_in_arrival_order_on_fastest_type():
    T = np.array([[1.0, 5.0], [2.0, 9.0], [3.0, 1.0]])
    p = Problem(T, [1, 1, 1], [1, 1], arrival=[2.0, 0.0, 1.0])
    X = get_policy("fifo").solve(p).X
    np.testing.assert_array_equal(X, [[0, 0], [0, 1], [1, 0]])


@pytest.mark.parametrize("name", ["max_min_fairness_packed", "min_makespan", "finish_time_fairness"])
def test_pop_k3_feasible_with_pairs(name):
    p = small_problem(5, n=30, pairs=True)
    alloc = get_policy(name, pop_k=3).solve(p)
    assert alloc.feasibility_errors(p) == []
    assert alloc.objective == pytest.approx(get_policy(name).evaluate(p, alloc))


def test_las_scale_and_weight_follow_gavel():
    # One type with 2 accelerators, equal throughput. Gavel gives a job on
    # `scale` accelerators 1/scale of the time of a 1-accelerator job
    # (agnostic: max min scale*time/w); its aware LAS divides by the throughput
    # under that agnostic allocation, so the weight enters squared.
    p = Problem(np.array([[4.0], [4.0]]), np.array([1, 2]), np.array([2.0]))
    for name in ("max_min_fairness_agnostic", "max_min_fairness"):
        X = get_policy(name).solve(p).X
        np.testing.assert_allclose(X[:, 0], [1.0, 0.5], atol=1e-6)
    w = Problem(np.array([[4.0], [4.0]]), np.array([1, 1]), np.array([1.0]), weight=np.array([1.0, 2.0]))
    np.testing.assert_allclose(get_policy("max_min_fairness_agnostic").solve(w).X[:, 0], [1 / 3, 2 / 3], atol=1e-6)
    np.testing.assert_allclose(get_policy("max_min_fairness").solve(w).X[:, 0], [0.2, 0.8], atol=1e-6)
