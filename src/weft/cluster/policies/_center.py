"""Central solutions of allocation LPs: what an interior-point solver returns.

Gavel solves its policies with cvxpy and ECOS, an interior-point method. When an
LP has many optimal solutions (max-min fairness leaves every job above the
bottleneck free; min_total_duration's feasibility problems have no objective at
all), an interior-point method ends near the *analytic center* of the optimal
face: the point that maximises the sum of the logarithms of all the slacks.
HiGHS returns a vertex instead. ``Center.solve`` computes the analytic center of

    X >= 0,   a[l, m] . X[m] <= h[l, m]  (L rows per job),   sum_m scale_m X[m, j] <= count_j,

by damped Newton steps. The optimal face of an LP is given to it relaxed by a
small relative epsilon (its always-tight rows then have a thin slack), which
approaches the face's own center as epsilon shrinks. The Newton system is one
k x k block per job (inverted by Woodbury over the job's L rows, stable however
thin a slack gets) plus k rank-one capacity terms (Woodbury again): O(n k^3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from weft.errors import PlanError


@dataclass
class Center:
    a: np.ndarray          # (L, n, k) local rows: a[l, m] . X[m] <= h[l, m]
    h: np.ndarray          # (L, n)
    scale: np.ndarray      # (n,) capacity coefficient of each job
    counts: np.ndarray     # (k,)
    b: np.ndarray | None = None   # (L, n): coefficient of one global variable t in each local row

    def slacks(self, X, t=0.0):
        loc = self.h - np.einsum("lmk,mk->lm", self.a, X)
        if self.b is not None:
            loc = loc - self.b * t
        return X, loc, self.counts - self.scale @ X

    def maximize_t(self, X0: np.ndarray, t0: float, gap: float = 1e-9, shrink: float = 20.0,
                   max_newton: int = 100) -> tuple[np.ndarray, float]:
        """Follow the central path of ``max t`` down to a duality gap below
        ``gap * max(1, |t|)``: the limit is the analytic center of the optimal face."""
        X, t = np.asarray(X0, float), float(t0)
        if any((s <= 0).any() for s in self.slacks(X, t)):
            raise PlanError("central solve: the start point is not strictly feasible")
        m = X.size + self.h.size + len(self.counts)
        mu = max(1.0, abs(t)) / m * 10.0
        while True:
            X, t = self._newton(X, t, 1.0 / mu, max_newton)
            if m * mu <= gap * max(1.0, abs(t)):
                return X, t
            mu /= shrink

    def interior_point(self) -> np.ndarray:
        """A strictly feasible X: the LP maximising the smallest row-normalised slack."""
        L, n, k = self.a.shape
        nx = n * k
        rows = np.arange(L * n)
        loc = sp.csr_matrix((self.a.ravel(), (np.repeat(rows, k), np.tile(np.arange(nx), L))), shape=(L * n, nx))
        cap = sp.csr_matrix((np.repeat(self.scale, k), (np.tile(np.arange(k), n), np.arange(nx))), shape=(k, nx))
        G = sp.vstack([-sp.identity(nx), loc, cap]).tocsr()
        h = np.concatenate([np.zeros(nx), self.h.ravel(), self.counts])
        norm = np.maximum(np.sqrt(np.asarray(G.multiply(G).sum(axis=1)).ravel()), 1e-12)
        A = sp.hstack([sp.diags(1.0 / norm) @ G, np.ones((len(h), 1))]).tocsr()
        c = np.zeros(nx + 1)
        c[-1] = -1.0
        res = linprog(c, A_ub=A, b_ub=h / norm, bounds=[(None, None)] * nx + [(None, 1.0)], method="highs")
        if res.status != 0 or res.x[-1] <= 1e-12:
            raise PlanError("central solve: the constraints have no interior")
        return res.x[:nx].reshape(n, k)

    def solve(self, X0: np.ndarray | None = None, max_newton: int = 100) -> np.ndarray:
        """The analytic center (no objective)."""
        X = self.interior_point() if X0 is None else np.asarray(X0, float)
        if any((s <= 0).any() for s in self.slacks(X)):
            raise PlanError("central solve: the start point is not strictly feasible")
        return self._newton(X, 0.0, 0.0, max_newton)[0]

    def _newton(self, X, t, weight, max_iter):
        """Maximise ``weight * t + sum log(slack)`` (damped Newton)."""
        has_t = self.b is not None
        for _ in range(max_iter):
            sx, sl, sc = self.slacks(X, t)
            il = 1.0 / sl
            gX = 1.0 / sx - np.einsum("lmk,lm->mk", self.a, il) - self.scale[:, None] / sc[None, :]
            gt = weight - float((self.b * il).sum()) if has_t else 0.0
            try:
                dX, dt = self._step(sx, sl, sc, gX, gt)
            except np.linalg.LinAlgError:       # numerically singular this close in: keep the iterate
                break
            dec = float((gX * dX).sum()) + gt * dt
            if not dec / 2 > 1e-12:
                break
            step = self._max_step(X, t, dX, dt)
            f0 = weight * t + sum(float(np.log(s).sum()) for s in (sx, sl, sc))
            while step > 1e-14:
                Xn, tn = X + step * dX, t + step * dt
                sn = self.slacks(Xn, tn)
                if all((s > 0).all() for s in sn) and \
                        weight * tn + sum(float(np.log(s).sum()) for s in sn) >= f0 + 0.25 * step * dec:
                    break
                step *= 0.5
            else:
                break
            X, t = Xn, tn
        return X, t

    def _max_step(self, X, t, dX, dt):
        sx, sl, sc = self.slacks(X, t)
        rl = np.einsum("lmk,mk->lm", self.a, dX) + (self.b * dt if self.b is not None else 0.0)
        step = 1.0
        for s, r in ((sx, -dX), (sl, rl), (sc, self.scale @ dX)):
            pos = r > 0
            if pos.any():
                step = min(step, 0.99 * float(np.min(s[pos] / r[pos])))
        return step

    def _step(self, sx, sl, sc, gX, gt):
        """Solve the Newton system ``H [dX; dt] = [gX; gt]``, H = sum over rows of
        ``g g^T / slack^2``: per job a k x k block (Woodbury over its L rows), k
        rank-one capacity terms (Woodbury), and t eliminated by a Schur complement
        written so that nothing cancels: ``sum_m b_m^T (W_m^-1 + A_m^T D_m^-1 A_m)^-1 b_m + ...``."""
        dinv = sx ** 2                                             # (n, k): inverse of the diagonal part
        A = np.transpose(self.a, (1, 2, 0))                        # (n, k, L)
        At = np.transpose(A, (0, 2, 1))
        DA = dinv[:, :, None] * A
        L = A.shape[2]
        S = At @ DA
        S[:, np.arange(L), np.arange(L)] += (sl ** 2).T
        Sinv = np.linalg.inv(S)

        def binv(V):                                               # V: (n, k, c) -> Bd^{-1} V per job
            DV = dinv[:, :, None] * V
            return DV - DA @ (Sinv @ (At @ DV))

        s = self.scale
        k = sx.shape[1]
        BinvU = binv(np.broadcast_to(np.eye(k), (len(s), k, k)) * s[:, None, None])   # (n, k, k)
        M = np.diag(sc ** 2) + np.einsum("m,mjc->jc", s, BinvU)
        y = binv(gX[:, :, None])[:, :, 0]
        Ainv_g = y - np.einsum("mkc,c->mk", BinvU, np.linalg.solve(M, s @ y))
        if self.b is None:
            return Ainv_g, 0.0
        bm = self.b.T[:, :, None]                                  # (n, L, 1)
        BdB = (DA @ (Sinv @ bm))[:, :, 0]                          # Bd^{-1} B per job (push-through)
        UtBdB = s @ BdB
        MiU = np.linalg.solve(M, UtBdB)
        schur = float((bm[:, :, 0] * (Sinv @ bm)[:, :, 0]).sum()) + float(UtBdB @ MiU)
        AinvB = BdB - np.einsum("mkc,c->mk", BinvU, MiU)
        dt = (gt - float((AinvB * gX).sum())) / schur
        return Ainv_g - dt * AinvB, dt


def ftf_central(T: np.ndarray, scale: np.ndarray, counts: np.ndarray, elapsed: np.ndarray,
                remaining: np.ndarray, baseline: np.ndarray, gap: float = 1e-8, shrink: float = 20.0,
                max_newton: int = 100) -> np.ndarray:
    """Central point of ``min_X max_m (elapsed_m + remaining_m / (T_m . X_m)) / baseline_m``
    over X >= 0, time share <= 1, capacity, as cvxpy writes it: ``r >= (e + rem v) / D``
    with ``v (T.X) >= 1`` (a rotated second-order cone, barrier ``-log(v T.X - 1)``).
    On the central path v sits midway in its interval, which leaves, per job, the
    barrier ``2 log(r - f_m(X)) + log(T_m . X_m)`` with ``f_m = (e + rem / T.X) / D``:
    its Hessian is diagonal plus rank-one rows, solved like ``Center``'s."""
    n, k = T.shape
    alpha = 0.5 * min(1.0 / k, float((counts / scale.sum()).min()))
    X = np.full((n, k), alpha)
    cE, eD = remaining / baseline, elapsed / baseline

    def parts(X, t):                                # t = -r is maximised
        x = (T * X).sum(axis=1)
        with np.errstate(divide="ignore"):
            psi = -t - eD - cE / x
        return X, 1.0 - X.sum(axis=1), counts - scale @ X, x, psi

    def value(w, t, p):
        return w * t + sum(float(np.log(q).sum()) for q in p[:4]) + 2.0 * float(np.log(p[4]).sum())

    t = -float((eD + cE / (T * X).sum(axis=1)).max()) - 1.0
    m_rows = X.size + 3 * n + k
    mu = max(1.0, abs(t)) / m_rows * 10.0
    rows = np.zeros((3, n, k))
    b = np.zeros((3, n))
    b[2] = 1.0
    solver = Center(rows, np.zeros((3, n)), scale, counts, b=b)
    while True:
        w = 1.0 / mu
        for _ in range(max_newton):
            p = sx, ssh, sc, x, psi = parts(X, t)
            gX = (1.0 / sx - (1.0 / ssh)[:, None] - scale[:, None] / sc[None, :]
                  + T * (2.0 * cE / (x ** 2 * psi) + 1.0 / x)[:, None])
            gt = w - float((2.0 / psi).sum())
            rows[0] = 1.0
            rows[1] = T
            rows[2] = -T * (cE / x ** 2)[:, None]
            weight_T = 1.0 / x ** 2 + 4.0 * cE / (x ** 3 * psi)
            pseudo = np.stack([ssh, 1.0 / np.sqrt(weight_T), psi / np.sqrt(2.0)])
            try:
                dX, dt = solver._step(sx, pseudo, sc, gX, gt)
            except np.linalg.LinAlgError:
                break
            dec = float((gX * dX).sum()) + gt * dt
            if not dec / 2 > 1e-12:
                break
            f0, step = value(w, t, p), 1.0
            while step > 1e-14:
                Xn, tn = X + step * dX, t + step * dt
                pn = parts(Xn, tn)
                if all((q > 0).all() for q in pn) and value(w, tn, pn) >= f0 + 0.25 * step * dec:
                    break
                step *= 0.5
            else:
                break
            X, t = Xn, tn
        if m_rows * mu <= gap * max(1.0, abs(t)):
            return X
        mu /= shrink
