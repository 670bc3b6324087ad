"""Pipeline timelines: per-rank forward/backward/communication events, bubble, PNG.

Events are ``(rank, kind, mb, chunk, start, end)`` tuples with wall-clock
times (``Pipeline(record=True).events``; gather them from every rank). Kinds:
F, B, U (weight update), SEND_F/SEND_B (posting a send) and ``wait`` (blocked
on a receive).
"""

from __future__ import annotations

import os
from pathlib import Path

from weft.atomic import save_figure

COLORS = {"F": "#4C72B0", "B": "#55A868", "U": "#C44E52", "wait": "#DDDDDD",
          "SEND_F": "#8172B2", "SEND_B": "#8172B2"}
BUSY = ("F", "B", "U")


def normalise(events: list[tuple]) -> list[tuple]:
    """Shift times so the earliest event starts at 0."""
    if not events:
        return []
    t0 = min(e[4] for e in events)
    return sorted((r, k, mb, c, s - t0, e - t0) for r, k, mb, c, s, e in events)


def bubble_fraction(events: list[tuple], ranks: int | None = None) -> float:
    """1 - (time spent computing) / (ranks x span from first compute to last).

    Compute time covers F, B and U; waiting, sending and idling count as bubble.
    """
    ev = [e for e in events if e[1] in BUSY]
    if not ev:
        return 0.0
    ranks = ranks or len({e[0] for e in events})
    span = max(e[5] for e in ev) - min(e[4] for e in ev)
    busy = sum(e[5] - e[4] for e in ev)
    return max(0.0, 1.0 - busy / (ranks * span)) if span > 0 else 0.0


def draw(events: list[tuple], path: str | os.PathLike, title: str = "pipeline timeline") -> Path:
    """Draw one row per rank (forward blue, backward green, update red, waits grey)."""
    return save_figure(figure(events, title), path, dpi=120)


def figure(events: list[tuple], title: str = "pipeline timeline"):
    """The timeline figure; its legend sits above the bars, never on a rank's row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ev = normalise(events)
    ranks = sorted({e[0] for e in ev})
    fig, ax = plt.subplots(figsize=(12, 0.6 * len(ranks) + 1.5))
    for r, kind, mb, chunk, s, e in ev:
        row = ranks.index(r)
        ax.broken_barh([(s * 1e3, max((e - s) * 1e3, 1e-3))], (row - 0.4, 0.8),
                       facecolors=COLORS.get(kind, "#999999"), edgecolor="white", linewidth=0.3)
        if kind in ("F", "B") and (e - s) > 0.02 * (ev[-1][5] if ev else 1):
            ax.text((s + e) / 2 * 1e3, row, str(mb), ha="center", va="center", fontsize=6,
                    color="white")
    ax.set_yticks(range(len(ranks)))
    ax.set_yticklabels([f"rank {r}" for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.set_title(f"{title} - bubble {bubble_fraction(events, len(ranks)):.1%}", pad=22)
    ax.legend(handles=[Patch(color=COLORS[k], label=lab) for k, lab in
                       (("F", "forward"), ("B", "backward"), ("U", "update"),
                        ("SEND_F", "send"), ("wait", "wait (recv)"))],
              loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=7, ncol=5, frameon=False)
    fig.tight_layout()
    return fig
