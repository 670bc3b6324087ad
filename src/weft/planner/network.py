"""Routes and link loads on a `Topology`, fast enough for thousands of devices.

    net = Network(topology)
    net.route("n0.gpu0", "n1.gpu3")          # link ids of the route (a tuple)
    net.loads([("n0.gpu0", "n1.gpu0", 4e6)])  # bytes per link for concurrent transfers

Routes follow `weft.collectives.fabric.Fabric`'s rule, so the plan's communication
terms and the collectives' cost model see the same paths: the direct link when there is
one, else the shortest route (hops first, then the wider links) whose intermediate hops
are all forwarding devices (switches, NICs), else the shortest route through any device
(e.g. a direct-connect fabric where servers forward). Shortest routes among the
forwarding devices are computed once per forwarding device (cached), so a route between
two compute devices costs a look-up over their forwarding neighbours, not a search.
"""

from __future__ import annotations

import heapq

import numpy as np

from weft.errors import TopologyError
from weft.topology.model import Topology


def _weight(bandwidth: float) -> float:
    return 1.0 + 1e-3 * (1e9 / bandwidth)  # Fabric's: hops first, then the wider route


class Network:
    """Directed links of `topology` as arrays, and cached routes between its devices."""

    def __init__(self, topology: Topology):
        self.topology = topology
        g = topology.graph
        self.names = list(g.nodes)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.forwards = [not g.nodes[n]["device"].computes for n in self.names]
        edges = list(g.edges(data=True))
        self.edges = [(a, b) for a, b, _ in edges]
        self.link_id = {(a, b): i for i, (a, b, _) in enumerate(edges)}
        self.cap = np.array([d["bandwidth"] for *_, d in edges], dtype=float)
        self.lat = np.array([d["latency"] for *_, d in edges], dtype=float)
        self.adj: list[list[tuple[int, int, float]]] = [[] for _ in self.names]
        self.radj: list[list[tuple[int, int, float]]] = [[] for _ in self.names]
        for i, (a, b, d) in enumerate(edges):
            w = _weight(d["bandwidth"])
            self.adj[self.index[a]].append((self.index[b], i, w))
            self.radj[self.index[b]].append((self.index[a], i, w))
        self._trees: dict = {}  # (source, forwarding only) -> (distances, predecessor links)
        self._routes: dict[tuple[str, str], tuple[int, ...]] = {}
        self._pairs: dict[tuple[str, str], tuple[float, float]] = {}
        self._per_byte: dict = {}
        self._compute: list[str] | None = None

    @property
    def compute_devices(self) -> list[str]:
        """Compute devices grouped by host (weft's rank order)."""
        if self._compute is None:
            self._compute = [d for names in self.topology.hosts().values() for d in names]
        return list(self._compute)

    def host(self, device: str) -> str:
        return self.topology.device(device).host

    # -- routes -----------------------------------------------------------------
    def _tree(self, src: int, forwarding_only: bool) -> tuple[dict[int, float], dict[int, int]]:
        """Shortest-route distances and predecessor links from `src`, through forwarding
        devices only (`forwarding_only`, `src` itself a forwarding device) or anywhere."""
        key = (src, forwarding_only)
        if key in self._trees:
            return self._trees[key]
        dist, pred = {src: 0.0}, {}
        heap = [(0.0, src)]
        while heap:
            d, u = heapq.heappop(heap)
            if d > dist[u]:
                continue
            for v, link, w in self.adj[u]:
                if forwarding_only and not self.forwards[v]:
                    continue
                nd = d + w
                if nd < dist.get(v, float("inf")) - 1e-12:
                    dist[v], pred[v] = nd, link
                    heapq.heappush(heap, (nd, v))
        self._trees[key] = (dist, pred)
        return dist, pred

    def _walk(self, pred: dict[int, int], src: int, dst: int) -> list[int]:
        out, v = [], dst
        while v != src:
            link = pred[v]
            out.append(link)
            v = self.index[self.edges[link][0]]
        return out[::-1]

    def _forwarded(self, s: int, t: int) -> tuple[int, ...] | None:
        """The best route s -> t whose inner hops are all forwarding devices (or None):
        s -> a forwarding neighbour fa, the forwarding-only route fa -> fb, fb -> t."""
        best, arg = float("inf"), None
        for fa, la, wa in self.adj[s]:
            if not self.forwards[fa]:
                continue
            dist, _ = self._tree(fa, True)
            for fb, lb, wb in self.radj[t]:
                if fb in dist and wa + dist[fb] + wb < best - 1e-12:
                    best, arg = wa + dist[fb] + wb, (fa, la, fb, lb)
        if arg is None:
            return None
        fa, la, fb, lb = arg
        return (la, *self._walk(self._tree(fa, True)[1], fa, fb), lb)

    def route(self, a: str, b: str) -> tuple[int, ...]:
        """Link ids from device `a` to device `b` (empty when a == b)."""
        key = (a, b)
        r = self._routes.get(key)
        if r is not None:
            return r
        if a == b:
            r = ()
        elif (a, b) in self.link_id:
            r = (self.link_id[a, b],)
        else:
            try:
                s, t = self.index[a], self.index[b]
            except KeyError as exc:
                raise TopologyError(f"unknown device {exc.args[0]!r} in topology "
                                    f"{self.topology.name!r}") from None
            r = self._forwarded(s, t)
            if r is None:
                dist, pred = self._tree(s, False)
                if t not in dist:
                    raise TopologyError(f"topology {self.topology.name!r}: no route from "
                                        f"{a!r} to {b!r}")
                r = tuple(self._walk(pred, s, t))
        self._routes[key] = r
        return r

    def path(self, a: str, b: str) -> list[str]:
        """The devices along the route a -> b (both ends included)."""
        links = self.route(a, b)
        return [a] + [self.edges[i][1] for i in links]

    def _pair(self, a: str, b: str) -> tuple[float, float]:
        got = self._pairs.get((a, b))
        if got is None:
            r = self.route(a, b)
            got = (min((float(self.cap[i]) for i in r), default=float("inf")),
                   sum(float(self.lat[i]) for i in r))
            self._pairs[a, b] = got
        return got

    def bandwidth(self, a: str, b: str) -> float:
        """Bottleneck bandwidth of the route a -> b (inf for a == b)."""
        return self._pair(a, b)[0]

    def latency(self, a: str, b: str) -> float:
        """Sum of the latencies along the route a -> b."""
        return self._pair(a, b)[1]

    # -- loads --------------------------------------------------------------------
    def loads(self, transfers) -> np.ndarray:
        """Bytes each link carries for concurrent transfers [(src, dst, bytes), ...]."""
        links, amounts = [], []
        for a, b, nbytes in transfers:
            r = self.route(a, b)
            links.extend(r)
            amounts.extend([nbytes] * len(r))
        if not links:
            return np.zeros(len(self.cap))
        return np.bincount(np.asarray(links, dtype=np.int64), weights=np.asarray(amounts, float),
                           minlength=len(self.cap))

    def per_byte(self, pairs) -> tuple[float, float]:
        """(seconds per byte at the most loaded link, longest latency) when every (src, dst)
        pair sends at once (cached by the pairs)."""
        key = tuple(pairs)
        got = self._per_byte.get(key)
        if got is None:
            load = self.loads([(a, b, 1.0) for a, b in key])
            lat = max((self.latency(a, b) for a, b in key), default=0.0)
            got = self._per_byte[key] = (float((load / self.cap).max(initial=0.0)), lat)
        return got

    def time(self, transfers) -> float:
        """Seconds for concurrent transfers when links are the only limit: the most loaded
        link's bytes over its bandwidth."""
        load = self.loads(transfers)
        return float((load / self.cap).max(initial=0.0))

    def fabric_paths(self, devices) -> dict[tuple[str, str], list[str]]:
        """Device paths between every pair of `devices` (for a collectives `Fabric`)."""
        return {(a, b): self.path(a, b) for a in devices for b in devices if a != b}


def ring_pairs(group) -> list[tuple[str, str]]:
    """Consecutive pairs of a ring over `group` in its order (none for one member)."""
    n = len(group)
    if n < 2:
        return []
    return [(group[i], group[(i + 1) % n]) for i in range(n)] if n > 2 else \
        [(group[0], group[1]), (group[1], group[0])]
