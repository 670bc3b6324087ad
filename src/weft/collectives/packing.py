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

Shallow trees: the LP has many optimal solutions, and deep (chain-like) trees
cost pipeline fill. After the optimum is known, the smallest depth limit D is
sought at which column generation over trees of depth <= D (a depth-limited
greedy Prim under the link prices as pricing heuristic) still reaches the
optimal rate; those trees are preferred when pruning keeps the same rate.
Trees used both ways (all-reduce) are measured by their radius: the schedule
hangs them from their centre (`schedule.from_trees`), which halves a chain's
depth without changing any link's load, and the depth-limited search prices
trees hung from every rank, not only from `root`.

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
from weft.collectives.schedule import center, heights, reroot

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
        _, y, _ = _solve(cols, links, caps)
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
    _, _, opt = _solve(cols, links, caps)
    shallow = _shallowest(fabric, root, mode, links, caps, trees, cols, opt)
    _POOLS[pool_key] = (links, caps, scale, tuple(trees), tuple(cols), shallow)
    return _POOLS[pool_key]


def tree_depth(parent: dict[int, int], nranks: int, mode: str = "down") -> int:
    """Levels below the root; for trees used both ways, below the best root (radius)."""
    if not parent:
        return 0
    if mode == "both":
        parent = reroot(parent, nranks, center(parent, nranks))
    return max(heights(parent, nranks).values())


def _greedy_tree(fabric: Fabric, root: int, price: dict, mode: str, limit: int):
    """Cheapest-edge-first (Prim) arborescence with every node at depth <= `limit`,
    ties to shallower parents; None if the greedy gets stuck."""
    depth, parent = {root: 0}, {}
    pairs = {"down": lambda p, c: [(p, c)], "up": lambda p, c: [(c, p)],
             "both": lambda p, c: [(p, c), (c, p)]}[mode]

    def cost(p, c):
        return sum(price.get(e, 0.0) for a, b in pairs(p, c) for e in fabric.route(a, b))

    while len(depth) < fabric.n:
        cands = [(cost(p, c), depth[p], p, c) for c in range(fabric.n) if c not in depth
                 for p in depth if depth[p] < limit]
        if not cands:
            return None
        _, d, p, c = min(cands)
        depth[c], parent[c] = d + 1, p
    return parent


def _milp_tree(fabric: Fabric, root: int, price: dict, mode: str, limit: int):
    """Cheapest arborescence of depth <= `limit`, exactly: a level-indexed MILP
    (x[p, c, l] = 1: c hangs from p at level l; p must sit at level l-1), whose LP
    relaxation is tight enough for HiGHS to solve it in milliseconds; or None."""
    n = fabric.n
    pairs = {"down": lambda p, c: [(p, c)], "up": lambda p, c: [(c, p)],
             "both": lambda p, c: [(p, c), (c, p)]}[mode]
    cost = {(p, c): sum(price.get(e, 0.0) for a, b in pairs(p, c) for e in fabric.route(a, b))
            for p in range(n) for c in range(n) if p != c and c != root}
    var = [(p, c, lv) for lv in range(1, limit + 1) for (p, c) in cost
           if (lv == 1) == (p == root)]
    col = {v: j for j, v in enumerate(var)}
    rows, lo, hi = [], [], []
    for c in range(n):  # every non-root node hangs from one parent at one level
        if c != root:
            rows.append({col[v]: 1.0 for v in var if v[1] == c})
            lo.append(1)
            hi.append(1)
    for p, c, lv in var:  # p must itself sit at level lv - 1
        if lv > 1:
            r = {col[p, c, lv]: 1.0}
            for q in range(n):
                if (q, p, lv - 1) in col:
                    r[col[q, p, lv - 1]] = -1.0
            rows.append(r)
            lo.append(-np.inf)
            hi.append(0)
    a = np.zeros((len(rows), len(var)))
    for i, r in enumerate(rows):
        for j, v in r.items():
            a[i, j] = v
    res = milp(np.array([cost[p, c] for p, c, _ in var]),
               constraints=[LinearConstraint(a, lo, hi)], integrality=np.ones(len(var)),
               bounds=Bounds(0, 1), options={"node_limit": 5000})  # deterministic
    if res.x is None:
        return None
    return {c: p for j, (p, c, _) in enumerate(var) if res.x[j] > 0.5}


def _cheapest(find, fabric: Fabric, root: int, price: dict, mode: str, limit: int):
    """`find`'s tree of depth <= `limit`; for trees used both ways the root is free
    (the schedule hangs each tree from its centre), so the cheapest over every root
    -- a radius limit, not a depth limit below `root` -- returned hung from `root`."""
    if mode != "both":
        return find(fabric, root, price, mode, limit)
    found = [t for t in (find(fabric, r, price, mode, limit) for r in range(fabric.n)) if t]
    best = min(found, key=lambda t: sum(price.get(e, 0.0) * k for e, k in
                                        _usage(fabric, t, mode).items()), default=None)
    return best and reroot(best, fabric.n, root)  # same links both ways: same usage


def _shallowest(fabric, root, mode, links, caps, trees, cols, opt, iters: int = 80):
    """(trees, cols) of the smallest depth limit at which column generation still
    reaches `opt`; the original columns if no smaller limit does."""
    best = (tuple(trees), tuple(cols))
    limit = max(tree_depth(t, fabric.n, mode) for t in trees) - 1
    while limit >= 1:  # down from the LP's depth: failures (the costly runs) happen once
        depth = [tree_depth(t, fabric.n, mode) for t in best[0]]
        got = _at_depth(fabric, root, mode, links, caps, *best, depth, opt, limit, iters)
        if got is None:
            break
        best, limit = got, max(tree_depth(t, fabric.n, mode) for t in got[0]) - 1
    return best


def _at_depth(fabric, root, mode, links, caps, trees, cols, depth, opt, limit, iters):
    """Column generation over trees of depth <= `limit` (seeded with those of `trees`);
    (trees, cols) once it reaches `opt`, else None."""
    ts = [t for t, d in zip(trees, depth) if d <= limit]
    cs = [c for c, d in zip(cols, depth) if d <= limit]
    seen = {tuple(sorted(t.items())) for t in ts}
    exact = 0
    for _ in range(iters):
        price = {}
        if cs:
            _, y, val = _solve(cs, links, caps)
            if val >= opt * (1 - 1e-6):
                return tuple(ts), tuple(cs)
            price = {e: y[i] for i, e in enumerate(links)}
        t = _cheapest(_greedy_tree, fabric, root, price, mode, limit)
        use = t and _usage(fabric, t, mode)
        if cs and (t is None or sum(price[e] * k for e, k in use.items()) >= 1 - 1e-7):
            exact += 1
            if exact > 20 or fabric.n > 16:
                return None
            t = _cheapest(_milp_tree, fabric, root, price, mode, limit)
            use = t and _usage(fabric, t, mode)
            if t is None or sum(price[e] * k for e, k in use.items()) >= 1 - 1e-7:
                break  # no improving tree of this depth
        if t is None or tuple(sorted(t.items())) in seen:
            break
        seen.add(tuple(sorted(t.items())))
        ts.append(t)
        cs.append(use)
    return None


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
    links, caps, scale, deep_trees, deep_cols, shallow = _columns(fabric, root, mode, max_iter)
    best = None
    for trees, cols in (shallow, (deep_trees, deep_cols)):  # shallow first: kept on ties
        trees, cols = list(trees), list(cols)
        x, _, opt = _solve(cols, links, caps)
        support = [j for j in np.argsort(-x) if x[j] > 1e-9 * max(x)]
        keep, xk, vk = _sparse(support, cols, links, caps, opt, tol, max_trees)
        chosen = [(trees[j], float(w) * scale) for j, w in zip(keep, xk) if w > 1e-6 * max(xk)]
        if best is None or vk > best[1] * (1 + 1e-6):
            best = (chosen, vk, opt)
        if shallow[0] == deep_trees:
            break
    chosen, vk, opt = best
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
               options={"node_limit": 2000, "mip_rel_gap": tol / 2})  # deterministic
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
