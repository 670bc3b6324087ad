"""Adaptive training from the command line: the options and the runner of `weft train --policy`
(weft.train_cli wires them in; `weft demo --adaptive` calls `run_job` with its own policy).

What trains: the digits example (default), a model spec (`--model FILE.py [--data FILE.py:FN]
[--parallel-plan PLAN]`) or a script that calls weft.adapt.fit (`--script train.py`). A
finished job writes `<out>/<timestamp>/report.json`, `loss.png` (the loss with resize,
switch, failure and re-plan events) and, for a model of the user's, `model.pt`; created only
once there is a report to write.
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
    acc, tl, fl = report["accuracy"], report.get("test_loss"), report["final_loss"]
    con.print(f"steps {report['steps']}, final workers {report['workers_final']}, "
              f"final loss {'n/a' if fl is None else f'{fl:.4f}'}"
              + (f", test loss {tl:.4f}" if tl is not None else "")
              + (f", test accuracy {acc:.2%}" if acc is not None else "")
              + (f", lost workers {report['dead_workers']}" if report["dead_workers"] else "")
              + (f", failed joiners {sorted(report['joiner_errors'])}"
                 if report.get("joiner_errors") else ""))


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


def _store(nodes, rdzv_timeout: float, devices):
    """(store or None, done): with an endpoint another machine hosts, serve its job here."""
    from weft.adapt.agent import join_elastic, open_store

    if nodes is None or nodes.endpoint is None:
        return None, False
    store, is_host = open_store(nodes.endpoint, rdzv_timeout)
    if is_host:
        return store, False
    node = join_elastic(store, nodes.endpoint, nodes.nproc_per_node, devices)
    print(f"node {node}: the job at {nodes.endpoint[0]}:{nodes.endpoint[1]} ended; "
          "its host prints the report")
    return None, True


def _finish(report: dict, out) -> None:
    """Print the report; write <out>/<timestamp>/ with report.json, loss.png and, when the
    run trained a model of the user's, model.pt (its state dict)."""
    import torch

    from weft.adapt.report import plot_run
    from weft.atomic import atomic_path
    from weft.runs import run_dir, write_json

    _print(report)
    folder = run_dir(out)
    if report["history"]:
        report["plot"] = str(plot_run(report["history"], report["events"], folder / "loss.png"))
    state = report.get("state")
    if state is not None and report["config"].get("model_spec") != "digits":
        with atomic_path(folder / "model.pt") as tmp:
            torch.save(state["model"], tmp)
        report["model_file"] = str(folder / "model.pt")
    doc = {k: v for k, v in report.items() if k not in ("state", "model")}
    write_json(folder / "report.json", doc, indent=1, default=str)
    print(f"report: {folder}/report.json"
          + (f"   loss plot with events: {report['plot']}" if "plot" in report else "")
          + (f"   trained model: {report['model_file']}" if "model_file" in report else ""))


def run_job(config: dict, *, policy: Any = None, policy_path: str | None = None,
            out: str | os.PathLike = "runs", nodes=None, rdzv_timeout: float = 60.0,
            workload=None, devices=None) -> int:
    """Host (or, with `nodes` whose endpoint another machine hosts, join) an adaptive job;
    the process that gets the report prints it and writes its run folder under `out`."""
    from weft.adapt.run import run_adaptive

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    store, done = _store(nodes, rdzv_timeout, devices)
    if done:
        return 0
    report = run_adaptive(config, policy_path=policy_path, policy=policy, nodes=nodes,
                          store=store, workload=workload)
    if report is None:  # a torchrun worker that does not end as rank 0
        return 0
    if workload is None:
        report["config"]["model_spec"] = "digits"
    _finish(report, out)
    return 0


def run_script(path: str, config: dict, *, policy_path: str | None, out="runs", nodes=None,
               rdzv_timeout: float = 60.0, devices=None) -> int:
    """`weft train --policy P --script train.py`: run the script as __main__; its calls of
    weft.adapt.fit take P (policy and `train:` settings) and the command line's options
    over their own. Each fit's report is printed and written like run_job's."""
    import runpy
    import sys
    from pathlib import Path

    from weft.adapt import api
    from weft.errors import WeftError

    if not Path(path).is_file():
        raise WeftError(f"--script {path}: file not found")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    store, done = _store(nodes, rdzv_timeout, devices)
    if done:
        return 0
    api.COMMAND_LINE = {"policy_path": policy_path, "overrides": config, "nodes": nodes,
                        "store": store}
    argv, syspath = sys.argv, list(sys.path)
    sys.argv = [str(path)]
    sys.path.insert(0, str(Path(path).resolve().parent))  # as `python train.py` would
    try:
        runpy.run_path(str(path), run_name="__main__")
        reports = api.COMMAND_LINE.get("reports", [])
    finally:
        sys.argv, sys.path[:] = argv, syspath
        api.COMMAND_LINE = None
    if not reports:
        raise WeftError(f"--script {path}: the script never called weft.adapt.fit")
    for report in reports:
        _finish(report, out)
    return 0


def train(args) -> int:
    """`weft train --policy P`: settings from P's `train:` section, overridden by options;
    the model is the digits example, a model spec (--model [--data]) or a script's."""
    from pathlib import Path

    from weft.adapt.workload import from_spec
    from weft.errors import WeftError

    keys = ("workers", "max_workers", "epochs", "max_steps", "strategy", "batch_size", "lr",
            "batch_rule", "checkpoint", "checkpoint_every", "topology", "algorithm")
    config = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if "checkpoint" in config:
        config["checkpoint"] = str(config["checkpoint"])
    if getattr(args, "resume", None):  # --resume DIR (an option shared with --plan)
        resume = str(args.resume)
        if Path(config.get("checkpoint", resume)).resolve() != Path(resume).resolve():
            raise WeftError(f"--resume {resume} and --checkpoint {config['checkpoint']}: a "
                            "resumed run goes on checkpointing into the folder it resumes from; "
                            "pass one of them")
        config.update(resume=True, checkpoint=resume)
    if getattr(args, "quiet", False):
        config["progress_seconds"] = 0.0
    devices = args.devices.split(",") if getattr(args, "devices", None) else None
    if devices:
        config["devices"] = devices
    nodes = nodes_from(args.nnodes, args.nproc_per_node, args.rdzv_endpoint)
    model, data, plan = getattr(args, "model", None), args.data, args.parallel_plan
    if args.script:
        if model or data or plan:
            raise WeftError("--script runs a script that calls weft.adapt.fit with its own "
                            "model; do not also pass --model, --data or --parallel-plan")
        return run_script(str(args.script), config, policy_path=args.policy, out=args.out,
                          nodes=nodes, rdzv_timeout=args.rdzv_timeout, devices=devices)
    workload = None
    if model:
        workload = from_spec(model, data)
        workload.plan = None if plan is None else str(plan)
    elif data or plan:
        raise WeftError("--data and --parallel-plan need --model SPEC (or use --script)")
    return run_job(config, policy_path=args.policy, out=args.out, nodes=nodes,
                   rdzv_timeout=args.rdzv_timeout, workload=workload, devices=devices)


def add_arguments(p) -> None:
    """Options of adaptive training other than --policy, --epochs, --max-steps, --lr, --out and
    --model (`weft train --policy` shares those with `weft train --plan`)."""
    from weft.adapt.config import BATCH_RULES
    from weft.args import existing_file, output_dir, positive_float, positive_int

    p.add_argument("--script", type=existing_file,
                   help="a training script calling weft.adapt.fit; the policy file and these "
                        "options take precedence over its own")
    p.add_argument("--data", help="with --model: FILE.py:FN or module:FN returning the dataset "
                                  "(or (train, test)) instead of the spec's dataset()")
    p.add_argument("--parallel-plan", dest="parallel_plan", type=existing_file,
                   help="with --model: a weft.plan (DP, FSDP, TP) applied in every world; "
                        "resizes change its data-parallel degree")
    p.add_argument("--workers", type=positive_int,
                   help="initial workers (overrides the policy file)")
    p.add_argument("--max-workers", dest="max_workers", type=positive_int)
    p.add_argument("--strategy", choices=["sgd", "sma", "pair"])
    p.add_argument("--batch-size", dest="batch_size", type=positive_int,
                   help="per worker (initially)")
    p.add_argument("--batch-rule", dest="batch_rule", choices=list(BATCH_RULES),
                   help="what a resize keeps: the per-worker batch or the global batch")
    p.add_argument("--checkpoint", type=output_dir,
                   help="folder of periodic asynchronous checkpoints")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=positive_int,
                   help="steps between checkpoints (default: only at the end)")
    p.add_argument("--topology", help="topology (file or builder) the collectives are "
                                      "re-planned on whenever the members change")
    p.add_argument("--devices", help="comma-separated devices of --topology for this "
                                     "machine's process slots")
    p.add_argument("--algorithm", help="all-reduce on --topology: auto (re-planned, default) "
                                       "or a fixed one (ring, dbtree, packing:K, ...)")
    p.add_argument("--nnodes", help="MIN:MAX machines (run the same command on each; "
                                    "machines may join while the job runs)")
    p.add_argument("--nproc-per-node", dest="nproc_per_node", type=positive_int,
                   help="worker process slots on this machine (default: max workers)")
    p.add_argument("--rdzv-endpoint", dest="rdzv_endpoint",
                   help="HOST:PORT of the job's c10d store; the machine that is HOST hosts it")
    p.add_argument("--rdzv-timeout", dest="rdzv_timeout", type=positive_float, default=60.0,
                   help="seconds to wait for the store (default 60)")
