"""The report of an adaptive run: the workers' logs merged, the loss plotted with events."""

from __future__ import annotations

import os
from pathlib import Path

from weft.atomic import save_figure

_COLORS = {"resize": "tab:green", "switch": "tab:purple", "failure": "tab:red",
           "batch": "tab:orange", "lr": "tab:gray", "rejected": "black"}


def merge(reports: dict[int, dict]) -> tuple[list[dict], list[dict]]:
    """One history (by step; the final members' view wins) and one de-duplicated event list."""
    ordered = sorted((r for r in reports.values() if "history" in r),
                     key=lambda r: (not r.get("left"), r.get("rank") is not None, -r["wid"]))
    by_step: dict[int, dict] = {}
    seen, events = set(), []
    for r in ordered:
        for h in r["history"]:
            by_step[h["step"]] = h
        for e in r["events"]:
            if e["kind"] in ("join", "leave"):
                continue
            key = (e["step"], e["kind"], e["detail"])
            if key not in seen:
                seen.add(key)
                events.append(e)
    return [by_step[s] for s in sorted(by_step)], sorted(events, key=lambda e: e["step"])


def plot_run(history: list[dict], events: list[dict], path: str | os.PathLike,
             title: str = "weft adaptive training") -> Path:
    """Loss per step, world size, and a marker line for every resize / switch / failure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], lw=1.2, color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.step(steps, [h["world"] for h in history], where="post", color="tab:green", alpha=0.4,
             label="workers")
    ax2.set_ylabel("workers")
    ax2.set_ylim(0, max(h["world"] for h in history) + 1)
    used = set()
    for e in events:
        color = _COLORS.get(e["kind"], "tab:brown")
        label = e["kind"] if e["kind"] not in used else None
        used.add(e["kind"])
        ax.axvline(e["step"], color=color, ls="--", lw=1, label=label)
        ax.annotate(e["detail"][:28], (e["step"], 1.0), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=7, color=color)
    lines, labels = ax.get_legend_handles_labels()
    l2, lab2 = ax2.get_legend_handles_labels()
    ax.legend(lines + l2, labels + lab2, loc="lower left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
