"""Small emulated-cluster shapes for the namespace fixture and benchmark."""

from __future__ import annotations

from weft.topology.builders import NVLINK2, dgx1
from weft.topology.model import Topology


def dgx1_mesh() -> Topology:
    """8 hosts wired as a DGX-1's NVLink hybrid cube-mesh: single and double links."""
    t = dgx1(pcie=False)
    t.name = "dgx1-mesh"
    return t


def star_slow(n: int = 4, fast: float = NVLINK2, slow: float = NVLINK2 / 2.5) -> Topology:
    """n hosts on one switch; the last host's link is 2.5x slower than the others."""
    t = Topology(name=f"star{n}-slow")
    t.add_device("switch", kind="switch", memory=0, flops=0, host="switch")
    for i in range(n):
        t.add_device(f"h{i}", host=f"h{i}")
        t.add_link(f"h{i}", "switch", slow if i == n - 1 else fast, kind="net")
    return t


def two_node(per_node: int = 3, intra: float = NVLINK2, inter: float = NVLINK2 / 2.5) -> Topology:
    """Two 'nodes' of `per_node` hosts: a fast full mesh inside each node, and one
    slow link between host i of node a and host i of node b (rails)."""
    t = Topology(name=f"two-node{per_node}")
    for node in "ab":
        for i in range(per_node):
            t.add_device(f"{node}{i}", host=f"node-{node}")
        for i in range(per_node):
            for j in range(i + 1, per_node):
                t.add_link(f"{node}{i}", f"{node}{j}", intra, kind="intra")
    for i in range(per_node):
        t.add_link(f"a{i}", f"b{i}", inter, kind="inter")
    return t


SHAPES = {"dgx1-mesh": dgx1_mesh, "star4-slow": star_slow, "two-node": two_node}
# Emulated Mbit/s per GB/s of topology bandwidth. All ranks and the emulated
# network share the machine's cores, so links must be slow enough that the
# per-message CPU work (gloo, the kernel's TCP/veth/tbf, weft's executor) of
# every rank fits beside the transfers: at 2.0 (DGX-1 mesh) and 8.0 (two-node)
# the all-reduces kept both cores of a 2-core machine 75-100% busy and reached
# 77-89% of the bound for that reason, not for the network's. The DGX-1 mesh (8
# ranks, all-reduce trees 4 hops deep) needs pieces of 24-32 KiB to keep the
# pipeline fill small, and only at 0.5 does the CPU keep up with them. Slower
# links make the benchmark longer (gloo's built-in broadcast on the DGX-1 mesh:
# 128 s for 64 MiB at 0.5).
SCALE = {"dgx1-mesh": 0.5, "star4-slow": 8.0, "two-node": 4.0}
