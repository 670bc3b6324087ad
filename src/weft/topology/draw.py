"""Draw a topology: nodes coloured by kind, edge width by bandwidth."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import networkx as nx

from weft.atomic import save_figure
from weft.topology.model import Topology

_COLORS = {"gpu": "#76b900", "cpu": "#1f77b4", "accelerator": "#9467bd", "switch": "#7f7f7f",
           "nic": "#ff7f0e"}


def layout(topo: Topology) -> dict:
    """Node positions. Switched networks (fat trees, stars) are drawn in layers, compute
    devices at the bottom; several multi-device hosts each on a small circle of their own (so
    the links inside a host do not lie on one line); anything else by a force layout."""
    g = topo.graph.to_undirected()
    if topo.name == "dgx1":  # the two quads side by side, the outer corners raised/lowered so
        # the long cube links (gpu0-gpu4, gpu3-gpu7) pass by gpu1/gpu5 and gpu2/gpu6
        pos = {"gpu0": (0, 1.3), "gpu1": (1, 1), "gpu2": (1, 0), "gpu3": (0, -0.3),
               "gpu4": (3, 1.3), "gpu5": (2, 1), "gpu6": (2, 0), "gpu7": (3, -0.3),
               "pcie0": (-0.8, 0.5), "pcie1": (3.8, 0.5)}
        if all(n in pos for n in g):
            return pos
    forwarders = [n for n in g if topo.device(n).kind in ("switch", "nic")]
    hosts = {}
    for n in g:
        hosts.setdefault(topo.device(n).host, []).append(n)
    if forwarders and nx.is_connected(g) and all(len(v) == 1 for h, v in hosts.items()
                                                 if v[0] not in forwarders):
        return _layered(g, [n for n in g if n not in forwarders])
    if len(hosts) > 1:
        return _clustered(hosts)
    if len(topo) <= 16 and nx.is_connected(g):
        return nx.kamada_kawai_layout(g)
    return nx.spring_layout(g, seed=0)


def _layered(g: nx.Graph, compute: list[str]) -> dict:
    """Compute devices in the bottom row, each forwarding device one row above its nearest
    compute device's hop distance; each row ordered by the mean position of the row below."""
    depth = nx.multi_source_dijkstra_path_length(g, compute, weight=None)
    rows: dict[int, list[str]] = {}
    for n, d in depth.items():
        rows.setdefault(d, []).append(n)
    pos, x = {}, {}
    for d in sorted(rows):
        if d == 0:
            order = sorted(rows[d], key=_natural)
        else:
            def below(n, d=d):
                xs = [x[m] for m in g[n] if depth[m] == d - 1]
                return (sum(xs) / len(xs) if xs else 0.5, _natural(n))
            order = sorted(rows[d], key=below)
        k = len(order)
        for i, n in enumerate(order):
            x[n] = (i + 0.5) / k
            pos[n] = (x[n] * max(4.0, len(rows[0]) * 0.6), float(d))
    return pos


def _clustered(hosts: dict[str, list[str]]) -> dict:
    """Hosts around a circle, each host's devices on the outer side of a small circle of its
    own. A straight line between two devices then never passes through a third: inside a host
    they are points of one circle, and a link leaving a host heads inwards, through the half
    of its circle that holds no device."""
    names = sorted(hosts, key=_natural)
    big = max(2.0, 1.5 / math.sin(math.pi / len(names)))
    pos = {}
    for i, h in enumerate(names):
        theta = math.pi - 2 * math.pi * i / len(names)  # first host on the left, clockwise
        cx, cy = big * math.cos(theta), big * math.sin(theta)
        devs = sorted(hosts[h], key=_natural)
        for j, n in enumerate(devs):
            phi = 0.0 if len(devs) == 1 else math.radians(-70 + 140 * j / (len(devs) - 1))
            pos[n] = (cx + math.cos(theta - phi), cy + math.sin(theta - phi))
    return pos


def _natural(name: str) -> list:
    """'p1.e10.h2' sorts after 'p1.e2.h0' (numbers compared as numbers)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def draw(topo: Topology, out: str | os.PathLike, title: str | None = None,
         edge_colors: dict | None = None) -> Path:
    """Write a PNG of the topology (atomically). `edge_colors` maps (u, v) to a colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = topo.graph.to_undirected()
    pos = layout(topo)
    bws = [d["bandwidth"] for _, _, d in topo.graph.edges(data=True)] or [1.0]
    top = max(bws)
    fig, ax = plt.subplots(figsize=(9, 6) if len(g) > 16 else (7, 5))
    widths = [0.8 + 5.0 * topo.graph.edges[u, v]["bandwidth"] / top for u, v in g.edges]
    colors = [(edge_colors or {}).get((u, v), (edge_colors or {}).get((v, u), "#555555"))
              for u, v in g.edges]
    nx.draw_networkx_edges(g, pos, ax=ax, width=widths, edge_color=colors, alpha=0.8)
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=520 if len(g) <= 24 else 260,
                           node_color=[_COLORS.get(topo.device(n).kind, "#cccccc") for n in g])
    texts = nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
    bottom = min(y for _, y in pos.values())
    row = [n for n, (_, y) in pos.items() if y == bottom]
    if len(row) > 8 and len(row) < len(g):  # a layered drawing: names under the devices
        for n in row:
            texts[n].set_rotation(90)
            texts[n].set_verticalalignment("top")
            texts[n].set_position((pos[n][0], pos[n][1] - 0.12))
            texts[n].set_clip_on(False)
    if len(g.edges) <= 40:
        labels = {(u, v): f"{topo.graph.edges[u, v]['bandwidth'] / 1e9:g}" for u, v in g.edges}
        nx.draw_networkx_edge_labels(g, pos, edge_labels=labels, ax=ax, font_size=6,
                                     label_pos=0.35, rotate=False,
                                     bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                                           "ec": "none", "alpha": 0.85})
    ax.set_title(title or f"{topo.summary()}\n(edge labels: GB/s per direction)", fontsize=9)
    ax.axis("off")
    return save_figure(fig, out, dpi=120, bbox_inches="tight")
