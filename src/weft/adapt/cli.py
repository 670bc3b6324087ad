"""Adaptive training from the command line: the options and the runner of `weft train --policy`
(weft.train_cli wires them in; `weft demo --adaptive` calls `run_job` with its own policy).

A finished job writes `<out>/<timestamp>/report.json` and `loss.png` (the loss with resize,
switch and failure events), created only once there is a report to write.
"""

from __future__ import annotations

import logging
import os
from typing import Any


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="adaptation events")
    for col in ("step", "event", "detail", "latency"):
        t.add_column(col)
    for e in report["events"]:
        lat = e.get("latency_s", e.get("recover_s"))
        t.add_row(str(e["step"]), e["kind"], e["detail"], f"{lat * 1e3:.0f} ms" if lat else "")
    con.print(t)
    acc = report["accuracy"]
    con.print(f"steps {report['steps']}, final workers {report['workers_final']}, "
              f"final loss {report['final_loss']:.4f}, test accuracy "
              f"{'n/a' if acc is None else f'{acc:.2%}'}"
              + (f", lost workers {report['dead_workers']}" if report["dead_workers"] else ""))


def nodes_from(nnodes: str | None, nproc_per_node: int | None, rdzv_endpoint: str | None):
    """Nodes from --nnodes / --nproc-per-node / --rdzv-endpoint (None: one machine)."""
    from weft.adapt.agent import Nodes, parse_endpoint, parse_nnodes
    from weft.errors import LaunchError

    if not (nnodes or rdzv_endpoint or nproc_per_node):
        return None
    lo, hi = parse_nnodes(nnodes or "1")
    endpoint = parse_endpoint(rdzv_endpoint) if rdzv_endpoint else None
    if hi > 1 and endpoint is None:
        raise LaunchError("--nnodes with more than one node needs --rdzv-endpoint HOST:PORT "
                          "(the same on every machine)")
    return Nodes(lo, hi, nproc_per_node, endpoint)


def run_job(config: dict, *, policy: Any = None, policy_path: str | None = None,
            out: str | os.PathLike = "runs", nodes=None, rdzv_timeout: float = 60.0) -> int:
    """Host (or, with `nodes` whose endpoint another machine hosts, join) an adaptive job;
    the process that gets the report prints it and writes its run folder under `out`."""
    from weft.adapt.agent import join_elastic, open_store
    from weft.adapt.report import plot_run
    from weft.adapt.run import run_adaptive
    from weft.runs import run_dir, write_json

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    store = None
    if nodes is not None and nodes.endpoint is not None:
        store, is_host = open_store(nodes.endpoint, rdzv_timeout)
        if not is_host:
            node = join_elastic(store, nodes.endpoint, nodes.nproc_per_node)
            print(f"node {node}: the job at {nodes.endpoint[0]}:{nodes.endpoint[1]} ended; "
                  "its host prints the report")
            return 0
    report = run_adaptive(config, policy_path=policy_path, policy=policy, nodes=nodes,
                          store=store)
    if report is None:  # a torchrun worker that does not end as rank 0
        return 0
    _print(report)
    folder = run_dir(out)
    if report["history"]:
        report["plot"] = str(plot_run(report["history"], report["events"], folder / "loss.png"))
    write_json(folder / "report.json", report, indent=1, default=str)
    print(f"report: {folder}/report.json"
          + (f"   loss plot with events: {report['plot']}" if "plot" in report else ""))
    return 0


def train(args) -> int:
    """`weft train --policy P`: settings from P's `train:` section, overridden by options."""
    keys = ("workers", "max_workers", "epochs", "max_steps", "strategy", "batch_size", "lr")
    config = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    return run_job(config, policy_path=args.policy, out=args.out,
                   nodes=nodes_from(args.nnodes, args.nproc_per_node, args.rdzv_endpoint),
                   rdzv_timeout=args.rdzv_timeout)


def add_arguments(p) -> None:
    """Options of adaptive training other than --policy, --epochs, --max-steps, --lr and --out
    (`weft train --policy` shares those with `weft train --plan`)."""
    p.add_argument("--workers", type=int, help="initial workers (overrides the policy file)")
    p.add_argument("--max-workers", dest="max_workers", type=int)
    p.add_argument("--strategy", choices=["sgd", "sma", "pair"])
    p.add_argument("--batch-size", dest="batch_size", type=int, help="per worker")
    p.add_argument("--nnodes", help="MIN:MAX machines (run the same command on each; "
                                    "machines may join while the job runs)")
    p.add_argument("--nproc-per-node", dest="nproc_per_node", type=int,
                   help="worker process slots on this machine (default: max workers)")
    p.add_argument("--rdzv-endpoint", dest="rdzv_endpoint",
                   help="HOST:PORT of the job's c10d store; the machine that is HOST hosts it")
    p.add_argument("--rdzv-timeout", dest="rdzv_timeout", type=float, default=60.0,
                   help="seconds to wait for the store (default 60)")
