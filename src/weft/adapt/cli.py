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


def _train(args) -> int:
    from weft.adapt.report import run_adaptive

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_adaptive(_overrides(args), policy_path=args.policy, plot=args.plot)
    _print(report)
    if args.json:
        write_json(args.json, report, indent=1, default=str)
    return 0


def _demo(args) -> int:
    from weft.adapt.report import run_adaptive
    from weft.adapt.rules import policy_from_dict

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = {"workers": 2, "max_workers": 4, "epochs": 4, "strategy": "sma", **_overrides(args)}
    if args.kill:
        cfg["kill"] = [80, 1]
    report = run_adaptive(cfg, policy=policy_from_dict(DEMO_POLICY), plot=args.plot)
    _print(report)
    if args.json:
        write_json(args.json, report, indent=1, default=str)
    return 0


def add_arguments(p) -> None:
    """Options of adaptive training other than --policy, --epochs, --max-steps and --lr
    (`weft train --policy` shares those with `weft train --plan`)."""
    p.add_argument("--workers", type=int, help="initial workers (overrides the policy file)")
    p.add_argument("--max-workers", dest="max_workers", type=int)
    p.add_argument("--strategy", choices=["sgd", "sma", "pair"])
    p.add_argument("--batch-size", dest="batch_size", type=int, help="per worker")
    p.add_argument("--plot", default="adapt_loss.png", help="loss plot with events (PNG)")
    p.add_argument("--json", help="write the full report as JSON here")


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
