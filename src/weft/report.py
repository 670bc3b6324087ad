"""Run directories, atomic JSON reports and loss-curve plots."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence


def run_dir(root: str | os.PathLike = "runs") -> Path:
    """A fresh `root/<timestamp>` folder (suffixed if two runs start in the same second)."""
    base = Path(root) / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path
