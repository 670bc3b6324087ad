"""Ring collectives: reduce-scatter + all-gather around a ring of ranks.

The ring order is chosen on the topology: among orders of the ranks (all of
them up to 9 ranks, else rank order and a greedy walk), the one whose slowest
link, counting links that several ring hops share, is fastest.
"""

from __future__ import annotations

import itertools

from weft.collectives.fabric import Fabric
from weft.collectives.schedule import Schedule, Segment, Transfer, from_trees


def ring_rate(fabric: Fabric, order: list[int]) -> float:
    """Bytes/s every ring hop can carry at once, given shared links."""
    n = len(order)
    load: dict = {}
    for i in range(n):
        for e in fabric.route(order[i], order[(i + 1) % n]):
            load[e] = load.get(e, 0) + 1
    return min(fabric.capacity(e) / k for e, k in load.items())


def _greedy(fabric: Fabric) -> list[int]:
    order, left = [0], set(range(1, fabric.n))
    while left:
        u = order[-1]
        v = max(sorted(left), key=lambda v: (fabric.direct(u, v), fabric.rank_bandwidth(u, v)))
        order.append(v)
        left.remove(v)
    return order


def ring_order(fabric: Fabric) -> list[int]:
    n = fabric.n
    if n <= 2:
        return list(range(n))
    cands = [list(range(n)), _greedy(fabric)]
    if n <= 9:
        cands += [[0, *p] for p in itertools.permutations(range(1, n)) if p[0] < p[-1]]
    return max(cands, key=lambda o: ring_rate(fabric, o))


def ring(collective: str, n: int, order: list[int] | None = None, root: int = 0) -> Schedule:
    """A ring schedule over ranks in `order` (default 0..n-1)."""
    order = list(order) if order is not None else list(range(n))
    if sorted(order) != list(range(n)):
        raise ValueError(f"ring order {order} is not a permutation of 0..{n - 1}")
    if collective in ("broadcast", "reduce"):
        chain = {order[(i + 1) % n]: order[i] for i in range(n - 1)}
        s = from_trees(collective, n, [(chain, 1.0)], "ring", root=root)
        return s
    segs = [Segment(0.0, 1.0, shard=r) for r in range(n)]
    rs: list[list[Transfer]] = []
    ag: list[list[Transfer]] = []
    for s in range(n - 1):
        # Position j sends (reducing) the shard owned by position j-s-1, so after
        # n-1 steps each position holds its own shard fully reduced ...
        rs.append([Transfer(order[j], order[(j + 1) % n], order[(j - s - 1) % n], True)
                   for j in range(n)])
        # ... and then passes shards on (copying) until every rank has all.
        ag.append([Transfer(order[j], order[(j + 1) % n], order[(j - s) % n], False)
                   for j in range(n)])
    steps = {"reduce_scatter": rs, "all_gather": ag, "allreduce": rs + ag}[collective]
    return Schedule(collective, n, "ring", segs, steps, root=None)


def ring_for(fabric: Fabric, collective: str, root: int = 0) -> Schedule:
    return ring(collective, fabric.n, ring_order(fabric), root)
