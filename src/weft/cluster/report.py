"""Simulation outputs: results JSON and a JCT-CDF plot per policy (written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weft.atomic import save_figure, write_json


def write_results(path: str | Path, results: list, meta: dict | None = None) -> None:
    data = {"meta": meta or {}, "results": [
        {**{k: float(v) if isinstance(v, (np.floating, float)) else v for k, v in r.summary().items()},
         "jct_seconds": {str(k): float(v) for k, v in sorted(r.jct.items())}} for r in results]}
    write_json(path, data, indent=1)


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
    save_figure(fig, path, dpi=120, format="png")
