"""`weft adapt train --policy policy.yaml` and `weft adapt demo`."""

from __future__ import annotations

import logging

from weft.atomic import write_json

DEMO_POLICY = {
    "policies": [{"switch_on_noise": {"threshold": 40, "to": "sgd", "warmup": 20}},
                 {"schedule": {30: 4, 60: 3}}],
    "rules": [{"when": "step == 45", "do": [{"resize": 0}], "once": True}],  # rejected: shown
}


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
    if report.get("plot"):
        con.print(f"loss plot with events: {report['plot']}")


def _overrides(args) -> dict:
    keys = ("workers", "max_workers", "epochs", "max_steps", "strategy", "batch_size", "lr")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _nodes(args):
    """Nodes from --nnodes / --nproc-per-node / --rdzv-endpoint (None: one machine)."""
    from weft.adapt.agent import Nodes, parse_endpoint, parse_nnodes

    if not (args.nnodes or args.rdzv_endpoint or args.nproc_per_node):
        return None
    lo, hi = parse_nnodes(args.nnodes or "1")
    endpoint = parse_endpoint(args.rdzv_endpoint) if args.rdzv_endpoint else None
    if hi > 1 and endpoint is None:
        from weft.errors import LaunchError

        raise LaunchError("--nnodes with more than one node needs --rdzv-endpoint HOST:PORT "
                          "(the same on every machine)")
    return Nodes(lo, hi, args.nproc_per_node, endpoint)


def _run(args, config: dict, **kw) -> int:
    """Host (or, with --rdzv-endpoint on another machine, join) an adaptive job."""
    from weft.adapt.agent import join_elastic, open_store
    from weft.adapt.run import run_adaptive

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    nodes, store = _nodes(args), None
    if nodes is not None and nodes.endpoint is not None:
        store, is_host = open_store(nodes.endpoint, args.rdzv_timeout)
        if not is_host:
            node = join_elastic(store, nodes.endpoint, nodes.nproc_per_node)
            print(f"node {node}: the job at {nodes.endpoint[0]}:{nodes.endpoint[1]} ended; "
                  "its host prints the report")
            return 0
    report = run_adaptive(config, plot=args.plot, nodes=nodes, store=store, **kw)
    if report is None:  # a torchrun worker that does not end as rank 0
        return 0
    _print(report)
    if args.json:
        write_json(args.json, report, indent=1, default=str)
    return 0


def _train(args) -> int:
    return _run(args, _overrides(args), policy_path=args.policy)


def _demo(args) -> int:
    from weft.adapt.rules import policy_from_dict

    cfg = {"workers": 2, "max_workers": 4, "epochs": 4, "strategy": "sma", **_overrides(args)}
    if args.kill:
        cfg["kill"] = [80, 1]
    return _run(args, cfg, policy=policy_from_dict(DEMO_POLICY))


def add_arguments(p) -> None:
    """Options of adaptive training other than --policy, --epochs, --max-steps and --lr
    (`weft train --policy` shares those with `weft train --plan`)."""
    p.add_argument("--workers", type=int, help="initial workers (overrides the policy file)")
    p.add_argument("--max-workers", dest="max_workers", type=int)
    p.add_argument("--strategy", choices=["sgd", "sma", "pair"])
    p.add_argument("--batch-size", dest="batch_size", type=int, help="per worker")
    p.add_argument("--plot", default="adapt_loss.png", help="loss plot with events (PNG)")
    p.add_argument("--json", help="write the full report as JSON here")
    p.add_argument("--nnodes", help="MIN:MAX machines (run the same command on each; "
                                    "machines may join while the job runs)")
    p.add_argument("--nproc-per-node", dest="nproc_per_node", type=int,
                   help="worker process slots on this machine (default: max workers)")
    p.add_argument("--rdzv-endpoint", dest="rdzv_endpoint",
                   help="HOST:PORT of the job's c10d store; the machine that is HOST hosts it")
    p.add_argument("--rdzv-timeout", dest="rdzv_timeout", type=float, default=60.0,
                   help="seconds to wait for the store (default 60)")


def _common(p, policy_required: bool) -> None:
    if policy_required:
        p.add_argument("--policy", required=True, help="policy YAML (see examples/policy.yaml)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--lr", type=float)
    add_arguments(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("adapt", help="adaptive / elastic training (KungFu-style)")
    sub = p.add_subparsers(dest="adapt_command", metavar="ACTION")
    t = sub.add_parser("train", help="train digits with an adaptation policy file")
    _common(t, True)
    t.set_defaults(func=_train)
    d = sub.add_parser("demo", help="2->4->3 workers, SMA->S-SGD switch, a rejected action")
    _common(d, False)
    d.add_argument("--kill", action="store_true", help="also SIGKILL one worker mid-run")
    d.set_defaults(func=_demo)
    p.set_defaults(func=lambda a: p.print_help() or 0)
