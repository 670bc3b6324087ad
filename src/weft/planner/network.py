"""Routes and link loads on a `Topology`, fast enough for thousands of devices.

    net = Network(topology)
    net.route("n0.gpu0", "n1.gpu3")          # link ids of the route (a tuple)
    net.loads([("n0.gpu0", "n1.gpu0", 4e6)])  # bytes per link for concurrent transfers

Routes follow `weft.collectives.fabric.Fabric`'s rule, so the plan's communication
terms and the collectives' cost model see the same paths: the direct link when there is
one, else the shortest route (hops first, then the wider links) whose intermediate hops
are all forwarding devices (switches, NICs), else the shortest route through any device
(e.g. a direct-connect fabric where servers forward). One Dijkstra per source device
gives its routes to every destination (cached), instead of one networkx search per pair.
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
        for i, (a, b, d) in enumerate(edges):
            self.adj[self.index[a]].append((self.index[b], i, _weight(d["bandwidth"])))
        self._trees: dict[tuple[int, bool], dict[int, int]] = {}  # (src, anywhere) -> pred link
        self._routes: dict[tuple[str, str], tuple[int, ...]] = {}

    @property
    def compute_devices(self) -> list[str]:
        """Compute devices grouped by host (weft's rank order)."""
        return [d for names in self.topology.hosts().values() for d in names]

    def host(self, device: str) -> str:
        return self.topology.device(device).host

    # -- routes -----------------------------------------------------------------
    def _tree(self, src: int, anywhere: bool) -> dict[int, int]:
        """Shortest-route predecessor links from `src`; without `anywhere` only forwarding
        devices are expanded (compute devices other than `src` are leaves)."""
        key = (src, anywhere)
        if key in self._trees:
            return self._trees[key]
        dist, pred = {src: 0.0}, {}
        heap = [(0.0, src)]
        while heap:
            d, u = heapq.heappop(heap)
            if d > dist[u]:
                continue
            if u != src and not anywhere and not self.forwards[u]:
                continue
            for v, link, w in self.adj[u]:
                nd = d + w
                if nd < dist.get(v, float("inf")) - 1e-12:
                    dist[v], pred[v] = nd, link
                    heapq.heappush(heap, (nd, v))
        self._trees[key] = pred
        return pred

    def _walk(self, pred: dict[int, int], src: int, dst: int) -> tuple[int, ...] | None:
        if dst not in pred:
            return None
        out, v = [], dst
        while v != src:
            link = pred[v]
            out.append(link)
            v = self.index[self.edges[link][0]]
        return tuple(reversed(out))

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
            r = self._walk(self._tree(s, False), s, t) or self._walk(self._tree(s, True), s, t)
            if r is None:
                raise TopologyError(f"topology {self.topology.name!r}: no route from {a!r} "
                                    f"to {b!r}")
        self._routes[key] = r
        return r

    def path(self, a: str, b: str) -> list[str]:
        """The devices along the route a -> b (both ends included)."""
        links = self.route(a, b)
        return [a] + [self.edges[i][1] for i in links]

    def bandwidth(self, a: str, b: str) -> float:
        """Bottleneck bandwidth of the route a -> b (inf for a == b)."""
        r = self.route(a, b)
        return float(self.cap[list(r)].min()) if r else float("inf")

    def latency(self, a: str, b: str) -> float:
        return float(self.lat[list(self.route(a, b))].sum())

    # -- loads --------------------------------------------------------------------
    def loads(self, transfers) -> np.ndarray:
        """Bytes each link carries for concurrent transfers [(src, dst, bytes), ...]."""
        load = np.zeros(len(self.cap))
        links, amounts = [], []
        for a, b, nbytes in transfers:
            r = self.route(a, b)
            links.extend(r)
            amounts.extend([nbytes] * len(r))
        if links:
            np.add.at(load, np.asarray(links, dtype=np.int64), np.asarray(amounts, dtype=float))
        return load

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
