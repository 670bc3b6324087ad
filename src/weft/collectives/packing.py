"""Spanning-tree packing (Blink): weighted spanning trees over the ranks whose
summed rates respect every link's capacity, with the total rate maximal.

An LP over trees, solved by column generation: the master LP (HiGHS, through
scipy.optimize.linprog) chooses tree rates under the link capacities; its dual
prices the links, and the pricing problem -- the cheapest spanning
arborescence under those prices -- is Edmonds' algorithm
(networkx.minimum_spanning_arborescence). When no tree costs less than 1 the
LP is optimal, which for broadcast is Edmonds' bound min_v maxflow(root, v).
Trees of small weight are then dropped (the LP re-solved on the rest) to
keep the number of trees, and so of messages, small.

A tree edge p -> c between ranks uses the links of the route p -> c (data
going down, broadcast), c -> p (data going up, reduce), or both (all-reduce,
which reduces up and broadcasts down the same tree at once).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from weft.collectives.fabric import Fabric

MODES = ("down", "up", "both")


@dataclass
class Packing:
    trees: list[tuple[dict[int, int], float]]  # (parent map, rate in bytes/s)
    rate: float  # total bytes/s
    optimum: float  # LP optimum before pruning (bytes/s)
    root: int
    mode: str

    def weights(self) -> list[float]:
        return [w / self.rate for _, w in self.trees]


def _usage(fabric: Fabric, parent: dict[int, int], mode: str) -> dict:
    use: dict = {}
    for c, p in parent.items():
        routes = {"down": [(p, c)], "up": [(c, p)], "both": [(p, c), (c, p)]}[mode]
        for a, b in routes:
            for e in fabric.route(a, b):
                use[e] = use.get(e, 0) + 1
    return use


def _solve(cols: list[dict], links: list, caps: np.ndarray):
    idx = {e: i for i, e in enumerate(links)}
    a = np.zeros((len(links), len(cols)))
    for j, use in enumerate(cols):
        for e, k in use.items():
            a[idx[e], j] = k
    res = linprog(-np.ones(len(cols)), A_ub=a, b_ub=caps, bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"tree packing LP failed: {res.message}")
    return res.x, -res.ineqlin.marginals, -res.fun


def _arborescence(fabric: Fabric, root: int, price: dict, mode: str,
                  maximize_bw: bool = False) -> dict[int, int]:
    g = nx.DiGraph()
    g.add_nodes_from(range(fabric.n))
    for p in range(fabric.n):
        for c in range(fabric.n):
            if p == c or c == root:
                continue
            if maximize_bw:
                g.add_edge(p, c, weight=fabric.rank_bandwidth(p, c) / len(fabric.route(p, c)))
                continue
            pairs = {"down": [(p, c)], "up": [(c, p)], "both": [(p, c), (c, p)]}[mode]
            g.add_edge(p, c, weight=sum(price.get(e, 0.0) for a, b in pairs
                                        for e in fabric.route(a, b)))
    if maximize_bw:
        t = nx.maximum_spanning_arborescence(g, attr="weight", preserve_attrs=False)
    else:
        t = nx.minimum_spanning_arborescence(g, attr="weight", preserve_attrs=False)
    return {c: p for p, c in t.edges}


_POOLS: dict = {}


def _columns(fabric: Fabric, root: int, mode: str, max_iter: int):
    """Column generation to LP optimality (cached per fabric, root and mode)."""
    pool_key = (fabric.key, root, mode)
    if pool_key in _POOLS:
        return _POOLS[pool_key]
    links = sorted({e for r in fabric.routes.values() for e in r})
    scale = max(fabric.capacity(e) for e in links)
    caps = np.array([fabric.capacity(e) / scale for e in links])
    trees = [_arborescence(fabric, root, {}, mode, maximize_bw=True)]
    cols = [_usage(fabric, trees[0], mode)]
    seen = {tuple(sorted(trees[0].items()))}
    for _ in range(max_iter):
        x, y, val = _solve(cols, links, caps)
        price = {e: y[i] for i, e in enumerate(links)}
        t = _arborescence(fabric, root, price, mode)
        use = _usage(fabric, t, mode)
        cost = sum(price[e] * k for e, k in use.items())
        key = tuple(sorted(t.items()))
        if cost >= 1 - 1e-7 or key in seen:
            break
        seen.add(key)
        trees.append(t)
        cols.append(use)
    _POOLS[pool_key] = (links, caps, scale, tuple(trees), tuple(cols))
    return _POOLS[pool_key]


def pack(fabric: Fabric, root: int = 0, mode: str = "both", tol: float = 0.03,
         max_trees: int = 16, max_iter: int = 300) -> Packing:
    """Pack spanning trees rooted at `root`; keep at most `max_trees`, losing at most
    `tol` of the optimal rate where that many trees suffice."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= root < fabric.n:
        raise ValueError(f"root {root} is not a rank of {fabric.n}")
    if fabric.n == 1:
        return Packing([({}, 1.0)], 1.0, 1.0, root, mode)
    links, caps, scale, trees, cols = _columns(fabric, root, mode, max_iter)
    trees, cols = list(trees), list(cols)
    x, _, opt = _solve(cols, links, caps)
    support = [j for j in np.argsort(-x) if x[j] > 1e-9 * max(x)]
    keep, xk, vk = _sparse(support, cols, links, caps, opt, tol, max_trees)
    chosen = [(trees[j], float(w) * scale) for j, w in zip(keep, xk) if w > 1e-6 * max(xk)]
    return Packing(chosen, vk * scale, opt * scale, root, mode)


def _sparse(support, cols, links, caps, opt, tol, max_trees):
    """At most `max_trees` of the columns with the largest total rate: the LP over
    the support when it is small enough, else a MILP choosing which trees to keep
    (HiGHS, time-limited), falling back to the heaviest trees."""
    if len(support) <= max_trees:
        x, _, v = _solve([cols[j] for j in support], links, caps)
        return support, x, v
    pool = list(dict.fromkeys(support + list(range(len(cols)))))
    idx = {e: i for i, e in enumerate(links)}
    m, k = len(links), len(pool)
    a = np.zeros((m, k))
    for jj, j in enumerate(pool):
        for e, cnt in cols[j].items():
            a[idx[e], jj] = cnt
    big = float(caps.max())
    # variables: rates x (k), then selectors z (k, binary)
    c = np.concatenate([-np.ones(k), np.zeros(k)])
    cons = [LinearConstraint(np.hstack([a, np.zeros((m, k))]), -np.inf, caps),
            LinearConstraint(np.hstack([np.eye(k), -big * np.eye(k)]), -np.inf, 0),
            LinearConstraint(np.concatenate([np.zeros(k), np.ones(k)])[None, :], 0, max_trees)]
    res = milp(c, constraints=cons, integrality=np.concatenate([np.zeros(k), np.ones(k)]),
               bounds=Bounds(0, np.concatenate([np.full(k, big), np.ones(k)])),
               options={"time_limit": 2.0, "mip_rel_gap": tol / 2})
    top = support[:max_trees]
    xt, _, vt = _solve([cols[j] for j in top], links, caps)
    if res.x is not None and -res.fun > vt:
        keep = [pool[jj] for jj in range(k) if res.x[k + jj] > 0.5 and res.x[jj] > 1e-9]
        xk, _, vk = _solve([cols[j] for j in keep], links, caps)
        return keep, xk, vk
    return top, xt, vt


def broadcast_bound(fabric: Fabric, root: int = 0) -> float:
    """Edmonds' bound on broadcast rate from `root`: min over ranks of maxflow(root, v)."""
    g = fabric.topology.graph
    src = fabric.devices[root]
    return min(nx.maximum_flow_value(g, src, d, capacity="bandwidth")
               for d in fabric.devices if d != src)


def reduce_bound(fabric: Fabric, root: int = 0) -> float:
    g = fabric.topology.graph
    dst = fabric.devices[root]
    return min(nx.maximum_flow_value(g, d, dst, capacity="bandwidth")
               for d in fabric.devices if d != dst)
