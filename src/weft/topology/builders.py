"""Builders for common interconnects.

Bandwidths are bytes/s per direction. Defaults follow public datasheets:
NVLink 2 (V100) 25 GB/s per link per direction, PCIe 3 x16 ~16 GB/s,
NVSwitch (A100) 300 GB/s per GPU per direction, 100 Gbit/s Ethernet/IB 12.5 GB/s.
"""

from __future__ import annotations

import itertools
from typing import Callable

from weft.errors import TopologyError
from weft.topology.model import Topology

NVLINK2 = 25e9
PCIE3 = 16e9
NVSWITCH = 300e9
NET100G = 12.5e9
V100 = dict(memory=16 * 2**30, flops=15.7e12)
A100 = dict(memory=80 * 2**30, flops=19.5e12)


def _check_n(n: int, least: int, what: str) -> None:
    if not isinstance(n, int) or n < least:
        raise TopologyError(f"{what}: need an integer >= {least}, got {n!r}")


def ring(n: int, bandwidth: float = NVLINK2, latency: float = 1e-6) -> Topology:
    """n devices in a bidirectional ring."""
    _check_n(n, 2, "ring")
    t = Topology(name=f"ring{n}")
    for i in range(n):
        t.add_device(f"gpu{i}", **V100)
    for i in range(n if n > 2 else 1):
        t.add_link(f"gpu{i}", f"gpu{(i + 1) % n}", bandwidth, latency, kind="nvlink")
    return t


def full_mesh(n: int, bandwidth: float = NVLINK2, latency: float = 1e-6) -> Topology:
    """n devices, every pair directly linked."""
    _check_n(n, 2, "full_mesh")
    t = Topology(name=f"mesh{n}")
    for i in range(n):
        t.add_device(f"gpu{i}", **V100)
    for i, j in itertools.combinations(range(n), 2):
        t.add_link(f"gpu{i}", f"gpu{j}", bandwidth, latency, kind="nvlink")
    return t


# NVLink count between GPU pairs of a DGX-1 with V100s (hybrid cube-mesh), as
# `nvidia-smi topo -m` reports it: NV1 = one link, NV2 = two bonded links.
DGX1_NVLINKS = {
    (0, 1): 1, (0, 2): 1, (0, 3): 2, (0, 4): 2,
    (1, 2): 2, (1, 3): 1, (1, 5): 2,
    (2, 3): 2, (2, 6): 1,
    (3, 7): 1,
    (4, 5): 1, (4, 6): 1, (4, 7): 2,
    (5, 6): 2, (5, 7): 1,
    (6, 7): 2,
}


def dgx1(pcie: bool = True, nvlink: float = NVLINK2, pcie_bw: float = PCIE3) -> Topology:
    """DGX-1 (V100): 8 GPUs in a hybrid cube-mesh of NVLinks.

    With `pcie=True` each quad of GPUs also hangs off a PCIe root complex
    (a forwarding `switch` device), and the two root complexes are joined
    by the inter-socket link (QPI/UPI, modelled at PCIe speed).
    """
    t = Topology(name="dgx1")
    for i in range(8):
        t.add_device(f"gpu{i}", host="dgx1", **V100)
    for (a, b), n in DGX1_NVLINKS.items():
        t.add_link(f"gpu{a}", f"gpu{b}", n * nvlink, 1e-6, kind="nvlink")
    if pcie:
        for s in (0, 1):
            t.add_device(f"pcie{s}", kind="switch", memory=0, flops=0, host="dgx1")
            for i in range(4 * s, 4 * s + 4):
                t.add_link(f"gpu{i}", f"pcie{s}", pcie_bw, 2e-6, kind="pcie")
        t.add_link("pcie0", "pcie1", pcie_bw, 3e-6, kind="qpi")
    return t


def nvswitch(n: int = 8, bandwidth: float = NVSWITCH) -> Topology:
    """n GPUs on one NVSwitch fabric (modelled as a single switch device)."""
    _check_n(n, 2, "nvswitch")
    t = Topology(name=f"nvswitch{n}")
    t.add_device("nvswitch", kind="switch", memory=0, flops=0)
    for i in range(n):
        t.add_device(f"gpu{i}", **A100)
        t.add_link(f"gpu{i}", "nvswitch", bandwidth, 1e-6, kind="nvswitch")
    return t


def multi_node(nodes: int = 2, per_node: int = 4, intra: float = NVLINK2 * 2,
               inter: float = NET100G, style: str = "rail") -> Topology:
    """`nodes` hosts of `per_node` GPUs each: a full mesh at `intra` inside a host.

    style='rail': GPU j of every host has its own NIC, and GPU j of each pair
    of hosts is linked at `inter` (rail-optimised networks).
    style='switch': each host has one NIC (a `nic` device, `intra` to each
    GPU) and all NICs hang off one network switch at `inter`.
    """
    _check_n(nodes, 1, "multi_node nodes")
    _check_n(per_node, 1, "multi_node per_node")
    if style not in ("rail", "switch"):
        raise TopologyError(f"multi_node style must be 'rail' or 'switch', got {style!r}")
    if nodes * per_node < 2:
        raise TopologyError("multi_node: need at least 2 devices in all")
    t = Topology(name=f"{nodes}x{per_node}")
    g = lambda h, j: f"n{h}.gpu{j}"  # noqa: E731
    for h in range(nodes):
        for j in range(per_node):
            t.add_device(g(h, j), host=f"node{h}", **V100)
        for a, b in itertools.combinations(range(per_node), 2):
            t.add_link(g(h, a), g(h, b), intra, 1e-6, kind="nvlink")
    if style == "rail":
        for j in range(per_node):
            for a, b in itertools.combinations(range(nodes), 2):
                t.add_link(g(a, j), g(b, j), inter, 5e-6, kind="net")
    elif nodes > 1:
        t.add_device("net", kind="switch", memory=0, flops=0, host="net")
        for h in range(nodes):
            t.add_device(f"n{h}.nic", kind="nic", memory=0, flops=0, host=f"node{h}")
            for j in range(per_node):
                t.add_link(g(h, j), f"n{h}.nic", intra, 1e-6, kind="pcie")
            t.add_link(f"n{h}.nic", "net", inter, 5e-6, kind="net")
    return t


def fat_tree(k: int = 4, bandwidth: float = NET100G) -> Topology:
    """A k-ary fat tree (Al-Fares et al.): k^3/4 hosts, one device each.

    k pods of k/2 edge and k/2 aggregation switches, (k/2)^2 core switches,
    every link at `bandwidth`.
    """
    if not isinstance(k, int) or k < 2 or k % 2:
        raise TopologyError(f"fat_tree: k must be an even integer >= 2, got {k!r}")
    t = Topology(name=f"fattree{k}")
    half = k // 2
    for c in range(half * half):
        t.add_device(f"core{c}", kind="switch", memory=0, flops=0, host="core")
    for p in range(k):
        for s in range(half):
            t.add_device(f"p{p}.agg{s}", kind="switch", memory=0, flops=0, host=f"pod{p}")
            t.add_device(f"p{p}.edge{s}", kind="switch", memory=0, flops=0, host=f"pod{p}")
        for s in range(half):
            for c in range(half):  # aggregation switch s talks to cores s*half .. s*half+half-1
                t.add_link(f"p{p}.agg{s}", f"core{s * half + c}", bandwidth, 2e-6, kind="net")
            for e in range(half):
                t.add_link(f"p{p}.agg{s}", f"p{p}.edge{e}", bandwidth, 1e-6, kind="net")
        for e in range(half):
            for h in range(half):
                name = f"p{p}.e{e}.h{h}"
                t.add_device(name, host=name, **V100)
                t.add_link(name, f"p{p}.edge{e}", bandwidth, 1e-6, kind="net")
    return t


def local(n: int) -> Topology:
    """This machine's n local gloo CPU ranks ("r0".."r{n-1}", one host): each linked to a
    loopback "switch" by links that cost nothing here, since on one host the collectives'
    cost is the CPU's (`weft plan auto --calibrate N` measures it); each rank's memory is
    an equal share of the machine's."""
    import os

    _check_n(n, 1, "local")
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 * 2**30
    t = Topology(name=f"local{n}")
    t.add_device("loopback", kind="switch", memory=0, flops=0, host="localhost")
    for i in range(n):
        t.add_device(f"r{i}", kind="cpu", memory=ram / n, flops=1e11, host="localhost")
        t.add_link(f"r{i}", "loopback", 1e12, 0.0, kind="loopback")
    return t


def is_local(topology: Topology) -> bool:
    """Whether every compute device is a CPU on one host (a `local` topology or alike)."""
    devs = topology.compute_devices
    return bool(devs) and all(d.kind == "cpu" for d in devs) and len(topology.hosts()) == 1


BUILDERS: dict[str, Callable[..., Topology]] = {
    "ring": ring,
    "full_mesh": full_mesh,
    "mesh": full_mesh,
    "dgx1": dgx1,
    "nvswitch": nvswitch,
    "multi_node": multi_node,
    "fat_tree": fat_tree,
    "local": local,
}
