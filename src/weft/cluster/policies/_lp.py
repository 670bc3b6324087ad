"""Sparse LP building blocks shared by the LP policies (solved with HiGHS).

Variable vector: ``[X (n*k, row-major) | Y (P*k) | extra]``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from weft.cluster.problem import Allocation, Problem
from weft.errors import PlanError


class LPBlocks:
    """Sparse matrices mapping the allocation variables to per-job effective
    throughput, per-job time share and per-type accelerator use."""

    def __init__(self, prob: Problem, T: np.ndarray | None = None, packed: bool = False):
        T = prob.T if T is None else T
        n, k = T.shape
        P = len(prob.pairs) if packed else 0
        self.n, self.k, self.P = n, k, P
        self.nx, self.nv = n * k, n * k + P * k
        rows = np.repeat(np.arange(n), k)
        cols = np.arange(n * k)
        tp_rows, tp_cols, tp_vals, sh_rows, sh_cols = [], [], [], [], []
        cap_rows = np.tile(np.arange(k), n)
        cap_vals = np.repeat(prob.scale, k)
        ub_y = np.zeros(0)
        if P:
            pc = self.nx + np.arange(P * k)
            for side in (0, 1):
                r = np.repeat(prob.pairs[:, side], k)
                tp_rows.append(r)
                tp_cols.append(pc)
                tp_vals.append(prob.TP[:, :, side].ravel())
                sh_rows.append(r)
                sh_cols.append(pc)
            cap_rows = np.concatenate([cap_rows, np.tile(np.arange(k), P)])
            cap_vals = np.concatenate([cap_vals, np.repeat(prob.scale[prob.pairs[:, 0]], k)])
            ub_y = (prob.TP.min(axis=2) > 0).astype(float).ravel()
        shape = (n, self.nv)
        self.eff = sp.csr_matrix((np.concatenate([T.ravel()] + tp_vals),
                                  (np.concatenate([rows] + tp_rows), np.concatenate([cols] + tp_cols))), shape=shape)
        self.share = sp.csr_matrix((np.ones(n * k + 2 * P * k),
                                    (np.concatenate([rows] + sh_rows), np.concatenate([cols] + sh_cols))), shape=shape)
        self.cap = sp.csr_matrix((cap_vals, (cap_rows, np.arange(self.nv))), shape=(k, self.nv))
        self.ub = np.concatenate([(T > 0).astype(float).ravel(), ub_y])
        self.counts = prob.counts
        self.pairs = prob.pairs if P else np.zeros((0, 2), int)

    def base_constraints(self, n_extra: int = 0):
        """Time share <= 1 per job and capacity per type, padded for extra variables."""
        A = sp.vstack([self.share, self.cap])
        if n_extra:
            A = sp.hstack([A, sp.csr_matrix((A.shape[0], n_extra))])
        return A.tocsr(), np.concatenate([np.ones(self.n), self.counts])

    def bounds(self, extra: list[tuple] = ()):
        lo = np.zeros(self.nv + len(extra))
        hi = np.concatenate([self.ub, np.zeros(len(extra))])
        for i, (a, b) in enumerate(extra):
            lo[self.nv + i] = -np.inf if a is None else a
            hi[self.nv + i] = np.inf if b is None else b
        return np.stack([lo, hi], axis=1)

    def allocation(self, v: np.ndarray, objective: float) -> Allocation:
        v = np.clip(v[: self.nv], 0.0, None)
        X = v[: self.nx].reshape(self.n, self.k)
        Y = v[self.nx: self.nv].reshape(self.P, self.k)
        return Allocation(X, Y, self.pairs.copy(), objective)


def solve_lp(c, A_ub, b_ub, bounds, what: str, A_eq=None, b_eq=None):
    """linprog with HiGHS; returns the solution vector or raises PlanError."""
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status != 0:
        raise PlanError(f"{what}: LP solve failed ({res.message})")
    return res.x


def lp_feasible(c, A_ub, b_ub, bounds) -> np.ndarray | None:
    res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status == 2:
        return None
    if res.status != 0:
        raise PlanError(f"LP solve failed ({res.message})")
    return res.x


def fill_max_sum(blocks: LPBlocks, norm: np.ndarray, floor: np.ndarray, what: str,
                 mult: np.ndarray | None = None) -> np.ndarray:
    """Second stage: keep every job's normalised throughput >= ``floor`` and
    maximise their sum, so capacity the first-stage optimum left idle is used."""
    A0, b0 = blocks.base_constraints()
    W = sp.diags(1.0 / norm) @ blocks.eff
    A = sp.vstack([A0, -W]).tocsr()
    b = np.concatenate([b0, -floor])
    w = np.ones(blocks.n) if mult is None else mult
    c = -np.asarray(W.T @ w).ravel()
    return solve_lp(c, A, b, blocks.bounds(), what)


def spread_evenly(blocks: LPBlocks, v: np.ndarray, counts: np.ndarray, what: str,
                  mult: np.ndarray | None = None) -> np.ndarray:
    """Keep each job's total time share of ``v`` and move its time as close as
    possible (L1) to a split across its usable types in proportion to their counts."""
    n, k, nx = blocks.n, blocks.k, blocks.nx
    X = v[:nx].reshape(n, k)
    usable = blocks.ub[:nx].reshape(n, k) * counts[None, :]
    target = (X.sum(1, keepdims=True) * usable / np.maximum(usable.sum(1, keepdims=True), 1e-12)).ravel()
    # variables [X | Y | d], minimise sum d with d >= |X - target|
    I = sp.identity(nx, format="csr")
    pad_y = sp.csr_matrix((nx, blocks.nv - nx))
    A_dev = sp.vstack([sp.hstack([I, pad_y, -I]), sp.hstack([-I, pad_y, -I])])
    A0 = sp.hstack([blocks.cap, sp.csr_matrix((k, nx))])
    A_ub = sp.vstack([A0, A_dev]).tocsr()
    b_ub = np.concatenate([counts, target, -target])
    A_eq = sp.hstack([blocks.share, sp.csr_matrix((n, nx))]).tocsr()
    b_eq = np.asarray(blocks.share @ v[:blocks.nv]).ravel()
    w = np.ones(n) if mult is None else mult
    c = np.concatenate([np.zeros(blocks.nv), np.repeat(w, k)])
    bounds = np.vstack([blocks.bounds(), np.tile([0.0, np.inf], (nx, 1))])
    return solve_lp(c, A_ub, b_ub, bounds, what + " (even spread)", A_eq=A_eq, b_eq=b_eq)[: blocks.nv]
