"""`run_adaptive`: run an adaptive job (hosted here, or as one of torchrun's workers) and
return its report (weft.adapt.report merges the workers' logs and plots the loss)."""

from __future__ import annotations

import os
from typing import Any

import torch

from weft.adapt.config import AdaptConfig
from weft.adapt.host import run_elastic
from weft.adapt.report import merge, plot_run
from weft.adapt.rules import load_policy_file
from weft.adapt.torchrun import run_under_torchrun
from weft.launch import under_torchrun


def run_adaptive(config: AdaptConfig | dict | None = None, policy_path: str | None = None,
                 policy: Any = None, plot: str | os.PathLike | None = None,
                 timeout: float = 600.0, nodes=None, store=None, workload=None) -> dict | None:
    """Train with an adaptation policy on local elastic workers; return a report dict.

    `policy_path`: a YAML policy file (its `train:` section gives defaults that
    `config` entries override); `policy`: a policy object instead. With `plot`
    a PNG of the loss with resize / switch / failure events is written there.
    `nodes` (weft.adapt.agent.Nodes) lets other machines join; `store`: an
    already hosted store (see weft.adapt.agent.open_store). Under torchrun
    this process is one worker (weft.adapt.torchrun) and only the one that
    ends as rank 0 returns the report; the others return None. `workload`: what to
    train (weft.adapt.workload.Workload; weft.adapt.fit makes one), by default the
    digits example.
    """
    settings: dict = {}
    if policy_path is not None:
        policy, settings = load_policy_file(policy_path)
    if isinstance(config, AdaptConfig):
        cfg = config
    else:
        cfg = AdaptConfig.from_dict({**settings, **(config or {})},
                                    where=str(policy_path or "config"))
    if workload is not None:  # everything checked here, before any worker starts
        from weft.adapt.workload import check

        check(workload, cfg.workers, cfg.batch_size, cfg.batch_rule, cfg.lr, cfg.momentum)
    if cfg.resume:
        from weft.adapt.durable import meta

        meta(cfg.checkpoint)
    if under_torchrun():  # this process is one of torchrun's workers
        out = run_under_torchrun(cfg, policy, workload)
        if out is None:
            return None  # only the process that ends as rank 0 reports
    else:
        out = run_elastic(cfg, policy, timeout=timeout, nodes=nodes, store=store,
                          workload=workload)
    history, events = merge(out["reports"])
    finals = [r for r in out["reports"].values()
              if r.get("role") != "standby" and not r.get("left") and "accuracy" in r]
    report = {
        "config": vars(cfg).copy(), "steps": history[-1]["step"] if history else 0,
        "workers_final": history[-1]["world"] if history else 0,
        "accuracy": finals[0]["accuracy"] if finals else None,
        "test_loss": finals[0].get("test_loss") if finals else None,
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
            r["params"] is not None and torch.equal(r["params"], finals[0]["params"])
            for r in finals),
        "joiner_errors": {w: m.splitlines()[0] for w, m in out.get("joiner_errors", {}).items()},
        "checkpoints": next((r.get("checkpoints", []) for r in finals if r.get("rank") == 0), []),
        # the trained model and optimizer state by parameter name (not written to JSON)
        "state": next((r.get("state") for r in finals if r.get("rank") == 0), None),
        "user_state": next((r.get("user_state") for r in finals if r.get("rank") == 0), None),
    }
    if plot is not None and history:
        report["plot"] = str(plot_run(history, events, plot))
    return report
