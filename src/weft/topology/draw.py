"""Draw a topology: nodes coloured by kind, edge width by bandwidth."""

from __future__ import annotations

import os
from pathlib import Path

import networkx as nx

from weft.atomic import save_figure
from weft.topology.model import Topology

_COLORS = {"gpu": "#76b900", "cpu": "#1f77b4", "accelerator": "#9467bd", "switch": "#7f7f7f",
           "nic": "#ff7f0e"}


def layout(topo: Topology) -> dict:
    g = topo.graph.to_undirected()
    if topo.name == "dgx1":  # the familiar two-quad picture
        outer = [(0, 2), (2, 2), (2, 0), (0, 0)]  # quad 0 outside, quad 1 inside: a cube
        inner = [(0.6, 1.4), (1.4, 1.4), (1.4, 0.6), (0.6, 0.6)]
        pos = {f"gpu{i}": (outer + inner)[i] for i in range(8)}
        pos.update({"pcie0": (-0.8, 1.0), "pcie1": (2.8, 1.0)})
        if all(n in pos for n in g):
            return pos
    hosts = topo.hosts()
    if len(hosts) > 1 and len(topo) <= 64:
        return nx.multipartite_layout(
            g, subset_key={h: [n for n in g if topo.device(n).host == h]
                           for h in {topo.device(n).host for n in g}})
    if len(topo) <= 16 and nx.is_connected(g):
        return nx.kamada_kawai_layout(g)
    return nx.spring_layout(g, seed=0)


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
    fig, ax = plt.subplots(figsize=(7, 5))
    widths = [0.8 + 5.0 * topo.graph.edges[u, v]["bandwidth"] / top for u, v in g.edges]
    colors = [(edge_colors or {}).get((u, v), (edge_colors or {}).get((v, u), "#555555"))
              for u, v in g.edges]
    nx.draw_networkx_edges(g, pos, ax=ax, width=widths, edge_color=colors, alpha=0.8)
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=520,
                           node_color=[_COLORS.get(topo.device(n).kind, "#cccccc") for n in g])
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
    if len(g.edges) <= 40:
        labels = {(u, v): f"{topo.graph.edges[u, v]['bandwidth'] / 1e9:g}" for u, v in g.edges}
        nx.draw_networkx_edge_labels(g, pos, edge_labels=labels, ax=ax, font_size=6)
    ax.set_title(title or f"{topo.summary()}\n(edge labels: GB/s per direction)", fontsize=9)
    ax.axis("off")
    return save_figure(fig, out, dpi=120, bbox_inches="tight")
