"""Reconfigurable (optical circuit-switched) fabrics: choose the circuits for the traffic.

Each server has `ports` optical ports of `bandwidth` bytes/s; a circuit joins a port of
one server to a port of another (a full-duplex link; parallel circuits add up). Given a
job's traffic per step (`Traffic`: the rings its collectives run, each member sending to
its successor, and point-to-point pairs such as pipeline stages), `design` builds a
degree-bounded topology in the manner of TopoOpt (Wang et al., NSDI'23): each ring
dimension gets some ports for rings over its groups, and rings over all servers in rank
order may get some too, as TotientPerms does: ring permutations i -> i + p (mod n) with p
coprime to n, p = 1 first (the collective's own order), then other strides or the same
ring again (more bandwidth; all ports on one ring over all servers is the fixed ring, so
the designs include it); the remaining ports
go to direct circuits for the point-to-point traffic: first the pairs that join two
components, by demand (a spanning forest, as Kruskal's), then a greedy degree-bounded
matching on demand per unit of capacity already given. `optimize` alternates, as
TopoOpt: traffic under the current placement -> the best design over every split of the
ports between the dimensions (each judged by `evaluate`, which also re-places the ranks
on it) -> repeat while the predicted step time improves.

This module knows nothing of plans: traffic and the judge come from the caller
(`weft.planner.fabric` builds both from a plan), so everything else keeps reading a
normal `Topology`. `ring`, `torus` and `fat_tree` build the fixed fabrics with the same
port budget to compare with.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx

from weft.errors import TopologyError
from weft.topology.model import Topology


@dataclass(frozen=True)
class Traffic:
    """Bytes per step: rings[dim] = (groups, bytes each member sends to its successor);
    pairs = {(a, b): bytes a sends to b}. Names are servers."""

    rings: dict[str, tuple[tuple[tuple[str, ...], ...], float]] = field(default_factory=dict)
    pairs: dict[tuple[str, str], float] = field(default_factory=dict)
    order: tuple[str, ...] = ()  # the servers in rank order (for rings over all of them)


def _servers(names, bandwidth: float, name: str, memory: float, flops: float) -> Topology:
    if bandwidth <= 0:
        raise TopologyError(f"port bandwidth must be > 0, got {bandwidth!r}")
    t = Topology(name=name)
    for s in names:
        t.add_device(s, memory=memory, flops=flops, host=s)
    return t


def _check_ports(ports: int, least: int, what: str) -> None:
    if not isinstance(ports, int) or ports < least:
        raise TopologyError(f"{what}: needs at least {least} ports per server, got {ports!r}")


def ring(servers: list[str], ports: int, bandwidth: float, latency: float = 1e-6,
         memory: float = 80 * 2**30, flops: float = 300e12) -> Topology:
    """A ring of `servers`, each link ports // 2 parallel circuits."""
    _check_ports(ports, 2, "ring")
    t = _servers(servers, bandwidth, f"ring{len(servers)}x{ports}", memory, flops)
    n, per = len(servers), ports // 2
    for i in range(n if n > 2 else 1):
        t.add_link(servers[i], servers[(i + 1) % n], per * bandwidth * (2 if n == 2 else 1),
                   latency, kind="circuit")
    return t


def torus(servers: list[str], ports: int, bandwidth: float, latency: float = 1e-6,
          memory: float = 80 * 2**30, flops: float = 300e12) -> Topology:
    """A 2-D torus as square as the server count allows (rows x cols), each link
    ports // 4 parallel circuits (a dimension of size 2 has one link per pair, doubled)."""
    _check_ports(ports, 4, "torus")
    n = len(servers)
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    cols = n // rows
    if rows == 1:
        return ring(servers, ports, bandwidth, latency, memory, flops)
    t = _servers(servers, bandwidth, f"torus{rows}x{cols}x{ports}", memory, flops)
    per = ports // 4
    at = lambda r, c: servers[(r % rows) * cols + (c % cols)]
    for r in range(rows):
        for c in range(cols):
            for dr, dc, size in ((0, 1, cols), (1, 0, rows)):
                if size == 2 and (dr and r == 1 or dc and c == 1):
                    continue  # a 2-ring is one link, given both circuits
                t.add_link(at(r, c), at(r + dr, c + dc), per * bandwidth * (2 if size == 2 else 1),
                           latency, kind="circuit")
    return t


def fat_tree(servers: list[str], ports: int, bandwidth: float, latency: float = 1e-6,
             memory: float = 80 * 2**30, flops: float = 300e12) -> Topology:
    """Every server's `ports` links into a non-blocking packet-switched fabric (a fat tree
    of full bisection, modelled as one switch): the ideal of the same port budget, at the
    cost of the switches."""
    _check_ports(ports, 1, "fat_tree")
    t = _servers(servers, bandwidth, f"fattree{len(servers)}x{ports}", memory, flops)
    t.add_device("fabric", kind="switch", memory=0, flops=0, host="fabric")
    for s in servers:
        t.add_link(s, "fabric", ports * bandwidth, latency, kind="net")
    return t


def totient_strides(n: int) -> list[int]:
    """Strides p (1 <= p <= n // 2) coprime to n: the ring permutations i -> i + p of n
    members (p and n - p give the same ring)."""
    return [p for p in range(1, n // 2 + 1) if math.gcd(p, n) == 1] if n > 2 else [1]


def ports_per_ring(n: int) -> int:
    return 1 if n == 2 else 2


def circuits(topology: Topology, bandwidth: float) -> dict[str, int]:
    """Ports in use per server (circuits of `bandwidth` at its links)."""
    out = {d.name: 0 for d in topology.compute_devices}
    for a, b, d in topology.graph.edges(data=True):
        if a in out and b in out and a < b:
            k = round(d["bandwidth"] / bandwidth)
            out[a] += k
            out[b] += k
    return out


def design(servers: list[str], traffic: Traffic, ports: int, bandwidth: float,
           split: dict[str, int], strides: str = "same", latency: float = 1e-6,
           memory: float = 80 * 2**30, flops: float = 300e12) -> Topology | None:
    """The circuits for `traffic` with `split[dim]` ports per server for the rings of `dim`
    ('same': that ring again for every further pair of ports; 'totient': the next coprime
    stride) and the rest for point-to-point pairs; None if it is not connected."""
    _check_ports(ports, 1, "design")
    used = {s: 0 for s in servers}
    links: dict[tuple[str, str], int] = {}

    def add(a: str, b: str, k: int = 1) -> None:
        key = (min(a, b), max(a, b))
        links[key] = links.get(key, 0) + k
        used[a] += k
        used[b] += k

    rings = dict(traffic.rings)
    if split.get(ALL) and traffic.order:
        rings[ALL] = ((tuple(traffic.order),), 0.0)
    for dim, (groups, _) in rings.items():
        p = split.get(dim, 0)
        for g in groups:
            n = len(g)
            if n < 2 or p <= 0:
                continue
            per = ports_per_ring(n)
            rounds = p // per
            seq = totient_strides(n) if strides == "totient" else [1]
            for k in range(rounds):
                stride = seq[k % len(seq)]
                for i in range(n if n > 2 else 1):
                    add(g[i], g[(i + stride) % n])
    if any(u > ports for u in used.values()):
        raise TopologyError(f"design: the split {split} needs more than {ports} ports")
    demand = {}
    for (a, b), v in traffic.pairs.items():
        if a != b and v > 0:
            key = (min(a, b), max(a, b))
            demand[key] = demand.get(key, 0.0) + v
    g = nx.Graph()
    g.add_nodes_from(servers)
    g.add_edges_from(links)
    # first, as Kruskal's spanning forest by demand: a pair that joins two components
    # (else a pipeline's chain can spend its last ports twice on one pair and stay cut)
    for (a, b), _ in sorted(demand.items(), key=lambda kv: (-kv[1], kv[0])):
        if used[a] < ports and used[b] < ports and not nx.has_path(g, a, b):
            add(a, b)
            g.add_edge(a, b)
    while demand:  # greedy: the pair with most demand per circuit it already has
        free = [(v / (1 + links.get(k, 0)), k) for k, v in demand.items()
                if used[k[0]] < ports and used[k[1]] < ports]
        if not free:
            break
        _, (a, b) = max(free)
        add(a, b)
        g.add_edge(a, b)
    comps = [sorted(c) for c in nx.connected_components(g)]
    while len(comps) > 1:  # join components through servers with a free port
        a = next((s for s in comps[0] if used[s] < ports), None)
        b = next((s for c in comps[1:] for s in c if used[s] < ports), None)
        if a is None or b is None:
            return None
        add(a, b)
        g.add_edge(a, b)
        comps = [sorted(c) for c in nx.connected_components(g)]
    t = _servers(servers, bandwidth, f"optical{len(servers)}x{ports}", memory, flops)
    for (a, b), k in sorted(links.items()):
        t.add_link(a, b, k * bandwidth, latency, kind="circuit")
    return t


def circuit_maps(a: Topology, b: Topology, limit: int = 64) -> list[dict[str, str]]:
    """Up to `limit` renamings of `a`'s servers onto `b`'s under which both have the same
    circuits (equal bandwidth per link); none if they differ (a design that is the ring in
    another order has 2n: the ring's rotations and reflections)."""
    def undirected(t: Topology) -> nx.Graph:
        g = nx.Graph()
        g.add_nodes_from(d.name for d in t.compute_devices)
        g.add_edges_from((ln.src, ln.dst, {"bw": ln.bandwidth}) for ln in t.links)
        return g

    gm = nx.isomorphism.GraphMatcher(
        undirected(a), undirected(b),
        edge_match=lambda x, y: abs(x["bw"] - y["bw"]) <= 1e-6 * y["bw"])
    return list(itertools.islice(gm.isomorphisms_iter(), limit))


def same_circuits(a: Topology, b: Topology) -> bool:
    """Whether `a` and `b` join their servers by the same circuits up to their names."""
    return bool(circuit_maps(a, b, limit=1))


ALL = "all"  # rings over every server, in rank order (TotientPerms over the whole job)


def splits(traffic: Traffic, ports: int) -> list[dict[str, int]]:
    """Every way to give the ring dims (and rings over all servers) whole rings' worth of
    ports; the rest goes to point-to-point pairs."""
    dims = [d for d, (gs, v) in traffic.rings.items() if v > 0 and gs and len(gs[0]) > 1]
    options = []
    if len(traffic.order) > 2:
        dims.append(ALL)
    for d in dims:
        per = 2 if d == ALL else ports_per_ring(len(traffic.rings[d][0][0]))
        options.append([per * k for k in range(ports // per + 1)])
    out = []
    for combo in itertools.product(*options):
        if sum(combo) <= ports:
            out.append(dict(zip(dims, combo)))
    return out or [{}]


@dataclass
class Optimized:
    topology: Topology
    placement: list[str]
    step_s: float
    split: dict[str, int]
    history: list[tuple[int, float, dict]]  # (round, best step, split)


def optimize(servers: list[str], ports: int, bandwidth: float,
             traffic_of: Callable[[list[str]], Traffic],
             evaluate: Callable[[Topology], tuple[float, list[str]]], rounds: int = 4,
             start: list[str] | None = None, **kw) -> Optimized:
    """TopoOpt's alternation (see the module doc). `traffic_of(placement)` gives the
    traffic with mesh rank r on server placement[r]; `evaluate(topology)` gives (predicted
    step seconds, the best placement on it)."""
    placement = list(start or servers)
    best: Optimized | None = None
    history = []
    for r in range(rounds):
        traffic = traffic_of(placement)
        round_best = None
        for split in splits(traffic, ports):
            for strides in ("same", "totient"):
                topo = design(servers, traffic, ports, bandwidth, split, strides, **kw)
                if topo is None:
                    continue
                step, where = evaluate(topo)
                if round_best is None or step < round_best[0] * (1 - 1e-9):
                    round_best = (step, where, topo, split)
        if round_best is None:
            raise TopologyError(f"no connected design with {ports} ports per server")
        step, where, topo, split = round_best
        history.append((r, step, split))
        if best is not None and step >= best.step_s * (1 - 1e-6):
            break
        best = Optimized(topo, where, step, split, history)
        placement = where
    best.history = history
    return best
