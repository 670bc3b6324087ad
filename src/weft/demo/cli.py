"""`weft demo`: the main job on an embedded default."""

from __future__ import annotations

from weft.errors import WeftError


def _demo(args) -> int:
    from rich.console import Console

    from weft.demo.run import DemoConfig, run_demo

    if args.ranks < 1:
        raise WeftError(f"--ranks must be >= 1, got {args.ranks}")
    if args.epochs < 1:
        raise WeftError(f"--epochs must be >= 1, got {args.epochs}")
    if args.adaptive:
        return _adaptive(args)
    con = Console()
    cfg = DemoConfig(ranks=args.ranks, epochs=args.epochs, backend=args.backend, out=args.out,
                     global_batch=args.batch, seed=args.seed)
    con.print(f"[bold]weft demo[/bold]: digits CNN, data parallel on {cfg.ranks} local gloo ranks "
              f"({cfg.backend} backend), {cfg.epochs} epochs, global batch {cfg.global_batch}")
    rep = run_demo(cfg)
    ok = rep["test_accuracy"] >= 0.95
    con.print(f"test accuracy [bold {'green' if ok else 'red'}]{rep['test_accuracy']:.2%}[/]  "
              f"throughput {rep['samples_per_second']:,.0f} samples/s  "
              f"wall {rep['wall_seconds']:.1f} s")
    con.print(f"report: {rep['dir']}/report.json   loss curve: {rep['dir']}/loss.png")
    return 0 if ok else 1


def _adaptive(args) -> int:
    """`weft demo --adaptive`: the KungFu-style demo (resize 2->4->3, strategy switch)."""
    import argparse

    from weft.adapt.cli import _demo as adaptive_demo
    from weft.runs import run_dir

    out = run_dir(args.out)
    ns = argparse.Namespace(workers=None, max_workers=None, epochs=None, max_steps=None,
                            strategy=None, batch_size=None, lr=None, kill=args.kill,
                            plot=str(out / "loss.png"), json=str(out / "report.json"))
    rc = adaptive_demo(ns)
    print(f"report: {out}/report.json   loss curve with events: {out}/loss.png")
    return rc


def register(sub) -> None:
    p = sub.add_parser("demo", help="train a CNN on digits with data parallelism on local ranks")
    p.add_argument("--ranks", type=int, default=4, help="local ranks (default 4)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=64, help="global batch size (default 64)")
    p.add_argument("--backend", choices=["weft", "ddp"], default="weft",
                   help="weft's data-parallel runtime or torch DDP")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="folder for run directories (default runs/)")
    p.add_argument("--adaptive", action="store_true",
                   help="adaptive demo instead: workers 2->4->3 without restart, SMA->S-SGD "
                        "switch on the gradient noise scale, an invalid action rejected")
    p.add_argument("--kill", action="store_true", help="with --adaptive: SIGKILL a worker mid-run")
    p.set_defaults(func=_demo)
