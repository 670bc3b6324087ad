"""Schedules are data: per step, which rank sends which segment to whom, and
whether the receiver adds it into its copy (reduce) or overwrites (copy).

A schedule splits the (flattened) tensor into *segments*. A segment is a
fraction range of either the whole tensor (`shard=None`) or one rank's shard
(`shard=r`: the r-th part of an even n-way split, as `numpy.array_split`
does), so one schedule serves every tensor size. Steps are synchronous in
meaning: sends in a step read the data as it was when the step began, and
receives are applied after. The executor pipelines a schedule by cutting every
segment into `pieces` equal pieces and running piece p's step s at time p + s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

COLLECTIVES = ("broadcast", "reduce", "allreduce", "reduce_scatter", "all_gather")


@dataclass(frozen=True)
class Segment:
    lo: float  # fraction of the region where the segment starts
    hi: float  # ... and ends
    shard: int | None = None  # None: the whole tensor; r: rank r's shard


@dataclass(frozen=True)
class Transfer:
    src: int
    dst: int
    seg: int
    reduce: bool  # True: dst adds the data into its copy; False: dst overwrites


@dataclass
class Schedule:
    collective: str
    nranks: int
    algorithm: str
    segments: list[Segment]
    steps: list[list[Transfer]]
    root: int | None = None
    trees: list[tuple[dict[int, int], float]] = field(default_factory=list)  # (parent map, weight)

    def __post_init__(self):
        if self.collective not in COLLECTIVES:
            raise ValueError(f"unknown collective {self.collective!r}; one of {COLLECTIVES}")

    @property
    def nsteps(self) -> int:
        return len(self.steps)


def split_points(n: int, parts: int) -> list[int]:
    """Boundaries of an even split of n items into `parts` (numpy.array_split's)."""
    q, r = divmod(n, parts)
    out, at = [0], 0
    for i in range(parts):
        at += q + (1 if i < r else 0)
        out.append(at)
    return out


def segment_range(seg: Segment, numel: int, nranks: int) -> tuple[int, int]:
    """Element range [start, stop) of a segment for a tensor of `numel` elements."""
    if seg.shard is None:
        base, length = 0, numel
    else:
        b = split_points(numel, nranks)
        base, length = b[seg.shard], b[seg.shard + 1] - b[seg.shard]
    return base + int(round(seg.lo * length)), base + int(round(seg.hi * length))


def weight_segments(weights: list[float], shard: int | None = None) -> list[Segment]:
    """Contiguous segments of one region, sized in proportion to `weights`."""
    total = float(sum(weights))
    out, acc = [], 0.0
    for i, w in enumerate(weights):
        hi = 1.0 if i == len(weights) - 1 else acc + w / total
        out.append(Segment(acc, hi, shard))
        acc = hi
    return out


# -- trees -> steps ------------------------------------------------------------
def _children(parent: dict[int, int]) -> dict[int, list[int]]:
    ch: dict[int, list[int]] = {}
    for c, p in parent.items():
        ch.setdefault(p, []).append(c)
    return ch


def tree_root(parent: dict[int, int], nranks: int) -> int:
    roots = [r for r in range(nranks) if r not in parent]
    if len(roots) != 1:
        raise ValueError(f"a tree needs exactly one root, found {roots}")
    return roots[0]


def heights(parent: dict[int, int], nranks: int) -> dict[int, int]:
    ch = _children(parent)
    h: dict[int, int] = {}

    def go(u):
        h[u] = 1 + max((go(c) for c in ch.get(u, [])), default=-1)
        return h[u]

    go(tree_root(parent, nranks))
    return h


def depths(parent: dict[int, int], nranks: int) -> dict[int, int]:
    d = {tree_root(parent, nranks): 0}

    def go(u):
        if u not in d:
            d[u] = go(parent[u]) + 1
        return d[u]

    for u in range(nranks):
        go(u)
    return d


def reduce_steps(parent: dict[int, int], nranks: int, seg: int) -> list[list[Transfer]]:
    """Reduce up the tree: a node sends to its parent once all its children have."""
    h = heights(parent, nranks)
    steps: list[list[Transfer]] = [[] for _ in range(max(h.values()))]
    for c, p in parent.items():
        steps[h[c]].append(Transfer(c, p, seg, True))
    return steps


def broadcast_steps(parent: dict[int, int], nranks: int, seg: int) -> list[list[Transfer]]:
    """Copy down the tree: depth-d nodes receive at step d-1."""
    d = depths(parent, nranks)
    steps: list[list[Transfer]] = [[] for _ in range(max(d.values()))]
    for c, p in parent.items():
        steps[d[c] - 1].append(Transfer(p, c, seg, False))
    return steps


def merge_steps(*parts: list[list[Transfer]], offsets: list[int] | None = None) -> list[list[Transfer]]:
    """Overlay step lists (each shifted by its offset)."""
    offsets = offsets or [0] * len(parts)
    n = max((o + len(p) for o, p in zip(offsets, parts)), default=0)
    out: list[list[Transfer]] = [[] for _ in range(n)]
    for o, p in zip(offsets, parts):
        for i, st in enumerate(p):
            out[o + i].extend(st)
    return out


def reroot(parent: dict[int, int], nranks: int, root: int) -> dict[int, int]:
    """The same undirected tree, hung from `root`."""
    adj: dict[int, list[int]] = {u: [] for u in range(nranks)}
    for c, p in parent.items():
        adj[c].append(p)
        adj[p].append(c)
    out, stack, seen = {}, [root], {root}
    while stack:
        u = stack.pop()
        for v in adj[u]:
            if v not in seen:
                seen.add(v)
                out[v] = u
                stack.append(v)
    return out


def center(parent: dict[int, int], nranks: int) -> int:
    """A node of least eccentricity in the undirected tree (the best root when the
    tree's edges are used in both directions)."""
    best = None
    for r in range(nranks):
        h = max(heights(reroot(parent, nranks, r), nranks).values())
        if best is None or h < best[0]:
            best = (h, r)
    return best[1]


def from_trees(collective: str, nranks: int, trees: list[tuple[dict[int, int], float]],
               algorithm: str, root: int | None = None) -> Schedule:
    """Compile weighted spanning trees into a schedule for any collective.

    broadcast/reduce: trees are hung from `root`; allreduce: reduce to each
    tree's root, then broadcast down the same tree; reduce_scatter/all_gather:
    each rank's shard is reduced to / broadcast from that rank along every tree
    (re-hung from it), split across trees by weight.
    """
    weights = [w for _, w in trees]
    segs: list[Segment] = []
    parts: list[list[list[Transfer]]] = []
    if collective in ("broadcast", "reduce", "allreduce"):
        segs = weight_segments(weights)
        for k, (par, _) in enumerate(trees):
            if root is not None:
                par = reroot(par, nranks, root)
            elif par:  # all-reduce: edges carry data both ways, any root will do
                par = reroot(par, nranks, center(par, nranks))
            if collective == "broadcast":
                parts.append(broadcast_steps(par, nranks, k))
            elif collective == "reduce":
                parts.append(reduce_steps(par, nranks, k))
            else:
                up = reduce_steps(par, nranks, k)
                parts.append(up + broadcast_steps(par, nranks, k))
    else:
        for r in range(nranks):
            base = len(segs)
            segs += weight_segments(weights, shard=r)
            for k, (par, _) in enumerate(trees):
                par = reroot(par, nranks, r)
                fn = reduce_steps if collective == "reduce_scatter" else broadcast_steps
                parts.append(fn(par, nranks, base + k))
    steps = merge_steps(*parts) if parts else []
    return Schedule(collective, nranks, algorithm, segs, steps, root=root, trees=list(trees))


# -- checking ------------------------------------------------------------------
def contributions(s: Schedule) -> list[list[frozenset]]:
    """Run the schedule symbolically: which ranks' contributions each rank's copy
    of each segment holds at the end (a multiset is not needed: a contribution
    counted twice raises)."""
    n = s.nranks
    have = [[frozenset([r]) for _ in s.segments] for r in range(n)]
    for i, step in enumerate(s.steps):
        new = [list(h) for h in have]
        for t in step:
            if not (0 <= t.src < n and 0 <= t.dst < n) or t.src == t.dst:
                raise ValueError(f"step {i}: bad transfer {t}")
            if t.reduce:
                cur = new[t.dst][t.seg]
                if cur & have[t.src][t.seg]:
                    raise ValueError(f"step {i}: {t} adds contributions "
                                     f"{sorted(cur & have[t.src][t.seg])} twice")
                new[t.dst][t.seg] = cur | have[t.src][t.seg]
            else:
                new[t.dst][t.seg] = have[t.src][t.seg]
        have = new
    return have


def check(s: Schedule) -> None:
    """Raise ValueError unless the schedule computes its collective."""
    have = contributions(s)
    n, full = s.nranks, frozenset(range(s.nranks))
    for k, seg in enumerate(s.segments):
        for r in range(n):
            h = have[r][k]
            if s.collective == "allreduce":
                need = full
            elif s.collective == "broadcast":
                need = frozenset([s.root])
            elif s.collective == "reduce":
                need = full if r == s.root else None
            elif s.collective == "reduce_scatter":
                need = full if r == seg.shard else None
            else:
                need = frozenset([seg.shard])
            if need is not None and h != need:
                raise ValueError(f"{s.algorithm} {s.collective}: rank {r} segment {k} ends with "
                                 f"contributions {sorted(h)}, expected {sorted(need)}")
