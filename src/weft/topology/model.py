"""The topology model: devices and directed links with bandwidth and latency.

A `Topology` holds a networkx DiGraph whose nodes are device names (with a
`Device` in the node's `device` attribute) and whose edges carry a `Link`.
Links are directed: a full-duplex cable is two links, one each way, which is
what both the collectives' cost model and the placement search need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

import networkx as nx

from weft.errors import TopologyError

DEVICE_KINDS = ("gpu", "cpu", "accelerator", "switch", "nic")


@dataclass(frozen=True)
class Device:
    """A device: something that computes (gpu/cpu/accelerator) or only forwards (switch/nic)."""

    name: str
    kind: str = "gpu"
    memory: float = 16 * 2**30  # bytes
    flops: float = 15e12  # peak FLOP/s
    host: str = "host0"

    @property
    def computes(self) -> bool:
        return self.kind not in ("switch", "nic")


@dataclass(frozen=True)
class Link:
    """A directed link from `src` to `dst`."""

    src: str
    dst: str
    bandwidth: float  # bytes/s
    latency: float = 1e-6  # seconds
    kind: str = "link"


@dataclass
class Topology:
    """Devices and directed links, held in a networkx DiGraph."""

    name: str = "custom"
    graph: nx.DiGraph = field(default_factory=nx.DiGraph, repr=False)

    # -- construction -----------------------------------------------------
    def add_device(self, name: str, kind: str = "gpu", memory: float = 16 * 2**30,
                   flops: float = 15e12, host: str = "host0") -> Device:
        if name in self.graph:
            raise TopologyError(f"device {name!r} is defined twice")
        dev = Device(name=name, kind=kind, memory=float(memory), flops=float(flops), host=host)
        self.graph.add_node(name, device=dev)
        return dev

    def add_link(self, src: str, dst: str, bandwidth: float, latency: float = 1e-6,
                 kind: str = "link", bidirectional: bool = True) -> None:
        """Add a link (both directions unless `bidirectional=False`).

        Adding a link where one already exists aggregates them: bandwidths add
        (two NVLinks between a pair act as one of twice the rate), the latency
        is the smaller one.
        """
        for a, b in ((src, dst), (dst, src)) if bidirectional else ((src, dst),):
            for end in (a, b):
                if end not in self.graph:
                    raise TopologyError(f"link {a}->{b}: unknown device {end!r}")
            if a == b:
                raise TopologyError(f"link {a}->{b}: a link cannot join a device to itself")
            if bandwidth <= 0:
                raise TopologyError(f"link {a}->{b}: bandwidth must be > 0, got {bandwidth}")
            if latency < 0:
                raise TopologyError(f"link {a}->{b}: latency must be >= 0, got {latency}")
            old = self.graph.edges[a, b]["link"] if self.graph.has_edge(a, b) else None
            if old is not None:
                link = Link(a, b, old.bandwidth + bandwidth, min(old.latency, latency), old.kind)
            else:
                link = Link(a, b, float(bandwidth), float(latency), kind)
            self.graph.add_edge(a, b, link=link, bandwidth=link.bandwidth, latency=link.latency)

    # -- queries ----------------------------------------------------------
    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def __contains__(self, name: object) -> bool:
        return name in self.graph

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices)

    @property
    def devices(self) -> list[Device]:
        return [d["device"] for _, d in self.graph.nodes(data=True)]

    @property
    def device_names(self) -> list[str]:
        return list(self.graph.nodes)

    @property
    def compute_devices(self) -> list[Device]:
        """Devices that run work (switches and NICs excluded), in insertion order."""
        return [d for d in self.devices if d.computes]

    @property
    def links(self) -> list[Link]:
        return [d["link"] for _, _, d in self.graph.edges(data=True)]

    def device(self, name: str) -> Device:
        try:
            return self.graph.nodes[name]["device"]
        except KeyError:
            raise TopologyError(f"unknown device {name!r} in topology {self.name!r}") from None

    def link(self, src: str, dst: str) -> Link | None:
        return self.graph.edges[src, dst]["link"] if self.graph.has_edge(src, dst) else None

    def bandwidth(self, src: str, dst: str) -> float:
        """Bandwidth of the direct link src->dst in bytes/s (0 if none)."""
        link = self.link(src, dst)
        return link.bandwidth if link else 0.0

    def neighbors(self, name: str) -> list[str]:
        return list(self.graph.successors(name))

    def hosts(self) -> dict[str, list[str]]:
        """Compute devices grouped by host, in insertion order."""
        out: dict[str, list[str]] = {}
        for d in self.compute_devices:
            out.setdefault(d.host, []).append(d.name)
        return out

    def is_connected(self) -> bool:
        return len(self) > 0 and nx.is_strongly_connected(self.graph)

    def components(self) -> list[list[str]]:
        return [sorted(c) for c in nx.strongly_connected_components(self.graph)]

    def path_bandwidth(self, src: str, dst: str) -> float:
        """Widest-path bandwidth src->dst (the bottleneck of the best route)."""
        if src == dst:
            return float("inf")
        best = {src: float("inf")}
        frontier = [src]
        # A widest-path search: relax edges while a wider bottleneck is found.
        while frontier:
            nxt = []
            for u in frontier:
                for v in self.graph.successors(u):
                    w = min(best[u], self.graph.edges[u, v]["bandwidth"])
                    if w > best.get(v, 0.0):
                        best[v] = w
                        nxt.append(v)
            frontier = nxt
        return best.get(dst, 0.0)

    def subset(self, names: Iterable[str], name: str | None = None) -> "Topology":
        """The sub-topology induced by `names` (devices and links among them)."""
        names = list(names)
        for n in names:
            self.device(n)
        sub = Topology(name=name or f"{self.name}[{len(names)}]")
        for n in names:
            sub.graph.add_node(n, **self.graph.nodes[n])
        for a, b, d in self.graph.subgraph(names).edges(data=True):
            sub.graph.add_edge(a, b, **d)
        return sub

    def validate(self) -> "Topology":
        """Raise TopologyError if the topology is empty or not (strongly) connected."""
        if len(self) == 0:
            raise TopologyError(f"topology {self.name!r} has no devices")
        if not self.is_connected():
            comps = self.components()
            shown = "; ".join("{" + ", ".join(c[:6]) + (", ..." if len(c) > 6 else "") + "}" for c in comps[:4])
            raise TopologyError(
                f"topology {self.name!r} is disconnected: {len(comps)} components: {shown}")
        return self

    # -- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict:
        """A plain dict (YAML/JSON-ready). Symmetric link pairs are written once."""
        links, done = [], set()
        for link in self.links:
            if (link.src, link.dst) in done:
                continue
            back = self.link(link.dst, link.src)
            entry = {k: v for k, v in asdict(link).items()}
            if back is not None and (back.bandwidth, back.latency, back.kind) == (
                    link.bandwidth, link.latency, link.kind):
                done.add((link.dst, link.src))
                entry["bidirectional"] = True
            else:
                entry["bidirectional"] = False
            done.add((link.src, link.dst))
            links.append(entry)
        return {"name": self.name, "devices": [asdict(d) for d in self.devices], "links": links}

    def summary(self) -> str:
        kinds = {}
        for d in self.devices:
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in kinds.items())
        return f"{self.name}: {parts}, {self.graph.number_of_edges()} directed links"
