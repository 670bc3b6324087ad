"""Run folders, JSON reports (atomic) and loss-curve plots: what every long command writes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

from weft.atomic import save_figure, write_json  # noqa: F401  (write_json re-exported)


def run_dir(root: str | os.PathLike = "runs") -> Path:
    """A fresh `root/<timestamp>` folder (suffixed if two runs start in the same second)."""
    base = Path(root) / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def plot_loss(path: str | os.PathLike, steps: Sequence[float], losses: Sequence[float],
              title: str = "training loss", events: Sequence[tuple[float, str]] = (),
              xlabel: str = "step") -> Path:
    """Loss curve PNG; `events` are (step, label) pairs drawn as vertical markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=1.5, color="#1f77b4")
    for i, (x, label) in enumerate(events):
        ax.axvline(x, color="#d62728", ls="--", lw=1)
        ax.annotate(label, (x, 1 - 0.07 * (i % 4)), xycoords=("data", "axes fraction"),
                    fontsize=7, rotation=0, ha="left", va="top", color="#d62728")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=110, bbox_inches="tight")
