"""The rank-level view of a topology: which devices the ranks run on, and the
physical route (a list of directed links) that a message from rank a to rank b
takes.

Ranks map to compute devices; switches and NICs only forward. A message
between two ranks goes over their direct link when there is one, else over
the shortest route whose intermediate hops are all forwarding devices, else
(for example a partial mesh, where the emulated network forwards) over the
widest shortest route through any device.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Sequence

import networkx as nx

from weft.errors import TopologyError
from weft.topology.model import Topology

Edge = tuple[str, str]


class Fabric:
    """Ranks 0..n-1 placed on `devices` of `topology`, with routes between them."""

    def __init__(self, topology: Topology, devices: Sequence[str] | None = None,
                 paths: dict[tuple[str, str], list[str]] | None = None):
        """`paths` (optional) fixes the device path for device pairs, e.g. the routes an
        emulated network really uses."""
        self.topology = topology
        self._paths = paths or {}
        if devices is None:
            devices = [d.name for d in topology.compute_devices]
        devices = list(devices)
        if not devices:
            raise TopologyError(f"topology {topology.name!r}: no compute devices to place ranks on")
        for i, d in enumerate(devices):
            if d not in topology:
                raise TopologyError(f"rank {i}: device {d!r} is not in topology {topology.name!r}")
            if not topology.device(d).computes:
                raise TopologyError(f"rank {i}: device {d!r} is a {topology.device(d).kind}, "
                                    "which forwards but cannot run a rank")
        dup = sorted({d for d in devices if devices.count(d) > 1})
        if dup:
            raise TopologyError(f"devices {dup} are given to more than one rank")
        self.devices = devices
        self.n = len(devices)
        self._check_connected()

    def _check_connected(self) -> None:
        g = self.topology.graph
        root = self.devices[0]
        reach = nx.descendants(g, root) | {root}
        back = nx.ancestors(g, root) | {root}
        bad = [d for d in self.devices if d not in reach or d not in back]
        if bad:
            raise TopologyError(
                f"topology {self.topology.name!r}: ranks on {bad} cannot reach (or be reached "
                f"from) rank 0 on {root!r}; the ranks' devices form a disconnected subset")

    # -- routes -------------------------------------------------------------
    def _path(self, a: str, b: str) -> list[str]:
        g = self.topology.graph
        if (a, b) in self._paths:
            return list(self._paths[a, b])
        if g.has_edge(a, b):
            return [a, b]
        fwd = [n for n in g if not self.topology.device(n).computes] + [a, b]
        sub = g.subgraph(fwd)

        def w(u, v, d):
            return 1.0 + 1e-3 * (1e9 / d["bandwidth"])  # hops first, then the wider route

        try:
            return nx.shortest_path(sub, a, b, weight=w)
        except nx.NetworkXNoPath:
            return nx.shortest_path(g, a, b, weight=w)

    @cached_property
    def routes(self) -> dict[tuple[int, int], list[Edge]]:
        out = {}
        for i, a in enumerate(self.devices):
            for j, b in enumerate(self.devices):
                if i != j:
                    p = self._path(a, b)
                    out[i, j] = list(zip(p[:-1], p[1:]))
        return out

    def route(self, i: int, j: int) -> list[Edge]:
        return self.routes[i, j]

    def capacity(self, e: Edge) -> float:
        return self.topology.graph.edges[e]["bandwidth"]

    def burst(self, e: Edge) -> float:
        """Bytes the link passes at once after being idle (a token-bucket shaper's burst,
        as the emulated clusters' tbf has; 0 for a plain link): it refills at the link's
        rate."""
        return float(self.topology.graph.edges[e].get("burst", 0.0))

    def latency(self, i: int, j: int) -> float:
        return sum(self.topology.graph.edges[e]["latency"] for e in self.route(i, j))

    def direct(self, i: int, j: int) -> bool:
        return len(self.route(i, j)) == 1

    def rank_bandwidth(self, i: int, j: int) -> float:
        """Bottleneck bandwidth of the route i -> j."""
        return min(self.capacity(e) for e in self.route(i, j))

    @cached_property
    def key(self) -> str:
        """A stable fingerprint (for caches): devices, links and placement."""
        h = hashlib.sha1()
        for e in sorted(self.topology.graph.edges(data=True), key=lambda x: (x[0], x[1])):
            h.update(f"{e[0]}>{e[1]}:{e[2]['bandwidth']:.6g}:{e[2]['latency']:.3g}:"
                     f"{e[2].get('burst', 0):.6g};".encode())
        h.update(",".join(self.devices).encode())
        h.update(repr(sorted(self._paths.items())).encode())
        return h.hexdigest()[:16]
