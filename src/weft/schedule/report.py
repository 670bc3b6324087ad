"""Simulation outputs: results JSON and a JCT-CDF plot per policy (written atomically)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_results(path: str | Path, results: list, meta: dict | None = None) -> None:
    data = {"meta": meta or {}, "results": [
        {**{k: float(v) if isinstance(v, (np.floating, float)) else v for k, v in r.summary().items()},
         "jct_seconds": {str(k): float(v) for k, v in sorted(r.jct.items())}} for r in results]}

    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1)
    _atomic(Path(path), write)


def plot_jct_cdf(path: str | Path, results: list) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        x = np.sort([r.jct[i] / 3600 for i in r.window])
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=f"{r.policy} (avg {r.avg_jct / 3600:.1f} h)")
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (hours)")
    ax.set_ylabel("fraction of jobs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
