"""`weft demo`: the main job on an embedded default; `--adaptive`: the adaptive-training demo."""

from __future__ import annotations

from weft.args import nonneg_int, positive_int
from weft.errors import WeftError

# `weft demo --adaptive`: SMA -> S-SGD when the noise scale passes 40, workers 2 -> 4 (step 30)
# -> 3 (step 60), and at step 45 an invalid action (0 workers) that is rejected and logged.
ADAPTIVE_CONFIG = {"workers": 2, "max_workers": 4, "epochs": 4, "strategy": "sma"}
ADAPTIVE_POLICY = {
    "policies": [{"switch_on_noise": {"threshold": 40, "to": "sgd", "warmup": 20}},
                 {"schedule": {30: 4, 60: 3}}],
    "rules": [{"when": "step == 45", "do": [{"resize": 0}], "once": True}],
}
KILL = [80, 1]  # --kill: worker 1 SIGKILLs itself at step 80


def _demo(args) -> int:
    from rich.console import Console

    from weft.demo.run import DemoConfig, run_demo

    if args.batch % args.ranks:
        raise WeftError(f"--batch {args.batch}: must be a multiple of --ranks {args.ranks} "
                        "(every rank takes the same share of the global batch)")
    if args.adaptive:
        return _adaptive(args)
    con = Console()
    cfg = DemoConfig(ranks=args.ranks, epochs=args.epochs, backend=args.backend, out=args.out,
                     global_batch=args.batch, seed=args.seed, progress=not args.quiet)
    con.print(f"[bold]weft demo[/bold]: digits CNN, data parallel on {cfg.ranks} local gloo ranks "
              f"({cfg.backend} backend), {cfg.epochs} epochs, global batch {cfg.global_batch}")
    rep = run_demo(cfg)
    con.print(f"test accuracy [bold]{rep['test_accuracy']:.2%}[/]  "
              f"throughput {rep['samples_per_second']:,.0f} samples/s  "
              f"wall {rep['wall_seconds']:.1f} s")
    con.print(f"report: {rep['dir']}/report.json   loss curve: {rep['dir']}/loss.png")
    return 0


def _adaptive(args) -> int:
    from weft.adapt.cli import run_job
    from weft.adapt.rules import policy_from_dict

    config = {**ADAPTIVE_CONFIG, **({"kill": KILL} if args.kill else {})}
    return run_job(config, policy=policy_from_dict(ADAPTIVE_POLICY), out=args.out)


def register(sub) -> None:
    p = sub.add_parser("demo", help="train a CNN on digits with data parallelism on local ranks")
    p.add_argument("--ranks", type=positive_int, default=4, help="local ranks (default 4)")
    p.add_argument("--epochs", type=positive_int, default=15)
    p.add_argument("--batch", type=positive_int, default=64,
                   help="global batch size, a multiple of --ranks (default 64)")
    p.add_argument("--backend", choices=["weft", "ddp"], default="weft",
                   help="weft's data-parallel runtime or torch DDP")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", default="runs", help="folder for run directories (default runs/)")
    p.add_argument("--adaptive", action="store_true",
                   help="adaptive demo instead: workers 2->4->3 without restart, SMA->S-SGD "
                        "switch on the gradient noise scale, an invalid action rejected")
    p.add_argument("--kill", action="store_true", help="with --adaptive: SIGKILL a worker mid-run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_demo)
