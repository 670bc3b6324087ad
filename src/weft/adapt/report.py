"""`run_adaptive`: run an elastic job, merge the workers' logs, plot loss with events."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from weft.adapt.config import AdaptConfig
from weft.adapt.elastic import run_elastic
from weft.adapt.rules import load_policy_file
from weft.adapt.torchrun import run_under_torchrun
from weft.launch import under_torchrun
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


def run_adaptive(config: AdaptConfig | dict | None = None, policy_path: str | None = None,
                 policy: Any = None, plot: str | os.PathLike | None = None,
                 timeout: float = 600.0, nodes=None, store=None) -> dict | None:
    """Train with an adaptation policy on local elastic workers; return a report dict.

    `policy_path`: a YAML policy file (its `train:` section gives defaults that
    `config` entries override); `policy`: a policy object instead. With `plot`
    a PNG of the loss with resize / switch / failure events is written there.
    `nodes` (weft.adapt.agent.Nodes) lets other machines join; `store`: an
    already hosted store (see weft.adapt.agent.open_store). Under torchrun
    this process is one worker (weft.adapt.torchrun) and only the one that
    ends as rank 0 returns the report; the others return None.
    """
    settings: dict = {}
    if policy_path is not None:
        policy, settings = load_policy_file(policy_path)
    if isinstance(config, AdaptConfig):
        cfg = config
    else:
        cfg = AdaptConfig.from_dict({**settings, **(config or {})},
                                    where=str(policy_path or "config"))
    if under_torchrun():  # this process is one of torchrun's workers
        out = run_under_torchrun(cfg, policy)
        if out is None:
            return None  # only the process that ends as rank 0 reports
    else:
        out = run_elastic(cfg, policy, timeout=timeout, nodes=nodes, store=store)
    history, events = merge(out["reports"])
    finals = [r for r in out["reports"].values()
              if r.get("role") != "standby" and not r.get("left") and "accuracy" in r]
    report = {
        "config": vars(cfg).copy(), "steps": history[-1]["step"] if history else 0,
        "workers_final": history[-1]["world"] if history else 0,
        "accuracy": finals[0]["accuracy"] if finals else None,
        "final_loss": history[-1]["loss"] if history else None,
        "events": events, "history": history, "dead_workers": sorted(out["dead"]),
        "pids": out["pids"],
        "resize_latency_s": [e.get("latency_s") for e in events if e["kind"] == "resize"],
        # Per process: its role and every membership epoch it was in (same pid = never
        # restarted); whether the final replicas hold bit-identical parameters.
        "workers": {w: {"role": r.get("role"), "pid_end": r.get("pid_end"),
                        "memberships": r.get("memberships", []), "left": r.get("left")}
                    for w, r in sorted(out["reports"].items())},
        "replicas_identical": bool(finals) and all(
            torch.equal(r["params"], finals[0]["params"]) for r in finals),
    }
    if plot is not None and history:
        report["plot"] = str(plot_run(history, events, plot))
    return report
