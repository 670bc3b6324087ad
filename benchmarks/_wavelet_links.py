"""Helpers of benchmarks/wavelet.py: the shaped-link condition (workers in network
namespaces on tbf-shaped veth links), link rates as arguments and labels, and the memory
drawing."""

from __future__ import annotations

import numpy as np


def link_cluster(workers: int, rate: float):
    """One namespace per worker, every link shaped to `rate` bytes/s each way: two workers
    on one direct link, more on a star (a switch namespace forwards)."""
    from weft.collectives.emulate.netns import NetnsCluster
    from weft.topology.model import Topology

    t = Topology(name=f"wavelet-{workers}x{rate:g}")
    for i in range(workers):
        t.add_device(f"w{i}", host=f"w{i}")
    if workers == 2:
        t.add_link("w0", "w1", rate, kind="net")
    else:
        t.add_device("switch", kind="switch", memory=0, flops=0, host="switch")
        for i in range(workers):
            t.add_link(f"w{i}", "switch", rate, kind="net")
    # 8000 Mbit/s per GB/s: the emulated rate is the topology's bandwidth itself
    return NetnsCluster(t, mbit_per_gbs=8000.0)


def bits(rate: float) -> str:
    """bytes/s as a link rate: 125e6 -> '1Gbit', 12.5e6 -> '100Mbit'."""
    for unit, scale in (("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if rate * 8 >= scale:
            return f"{rate * 8 / scale:g}{unit}"
    return f"{rate * 8:g}bit"


def rate_arg(text: str) -> float | None:
    """--link: 'loopback' (None) or a link rate such as 1Gbit, 100Mbit (bytes/s)."""
    import argparse

    from weft.units import parse_size

    if text == "loopback":
        return None
    try:
        r = parse_size(text, "--link")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not r > 0:
        raise argparse.ArgumentTypeError(f"--link: a rate must be > 0, got {text!r}")
    return r


def plot_memory(results, cfg, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from weft.atomic import save_figure

    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharey=True)
    for ax, how in zip(axes, ("ticktock", "gang")):
        tls = [r["mem"][(how, 2 * cfg["batch"])] for r in results if r["worker"] == 0]
        start = max(tl["start"] for tl in tls)
        end = min(tl["end"] for tl in tls)
        times = np.linspace(start, end, 2000)
        total = np.zeros(len(times))
        for wave, tl in enumerate(tls):
            idx = np.clip(np.searchsorted(tl["t"], times, side="right") - 1, 0, None)
            ax.plot((times - start) / 1e9, tl["bytes"][idx] / 2**20, lw=1,
                    label=("tick", "tock")[wave] + " wave")
            total += tl["bytes"][idx]
        ax.plot((times - start) / 1e9, total / 2**20, lw=1.5, color="k", label="together")
        ax.set_title(f"worker 0, {'tick-tock' if how == 'ticktock' else 'gang-launched'}")
        ax.set_ylabel("allocated (MiB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("seconds")
    save_figure(fig, path, dpi=110, bbox_inches="tight")
