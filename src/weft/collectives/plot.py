"""Draw a schedule's trees on the topology: one panel per tree."""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx

from weft.atomic import save_figure
from weft.collectives.fabric import Fabric
from weft.topology.draw import layout

_PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f"]


def draw_trees(fabric: Fabric, trees: list[tuple[dict[int, int], float]], out, title: str = "") -> Path:
    """Write a PNG (atomically): each tree's edges as arrows over the topology's links."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topo = fabric.topology
    g = topo.graph.to_undirected()
    pos = layout(topo)
    k = max(1, len(trees))
    cols = min(4, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    total = sum(w for _, w in trees) or 1.0
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(trees):
            continue
        parent, w = trees[i]
        nx.draw_networkx_edges(g, pos, ax=ax, edge_color="#cccccc", width=1.0)
        t = nx.DiGraph()
        for c, p in parent.items():
            path = [fabric.devices[p]] + [b for _, b in fabric.route(p, c)]
            t.add_edges_from(zip(path[:-1], path[1:]))
        nx.draw_networkx_edges(t, pos, ax=ax, edge_color=_PALETTE[i % len(_PALETTE)], width=2.2,
                               arrows=True, arrowsize=12, node_size=300)
        colors = ["#76b900" if topo.device(n).computes else "#7f7f7f" for n in g]
        nx.draw_networkx_nodes(g, pos, ax=ax, node_size=300, node_color=colors)
        nx.draw_networkx_labels(g, pos, ax=ax, font_size=6)
        ax.set_title(f"tree {i}: {w / total:.0%} of data", fontsize=8)
    fig.suptitle(title or topo.summary(), fontsize=9)
    return save_figure(fig, out, dpi=110, bbox_inches="tight")
