"""`weft train --plan plan.json`: run a pipeline plan on local ranks."""

from __future__ import annotations

from weft.errors import PlanError


def _train(args) -> int:
    from rich.console import Console

    from weft.launch import launch
    from weft.parallel.pipeline import KINDS, PipelinePlan, bubble_fraction, draw
    from weft.parallel.pipeline.train import evaluate, rank_main

    con = Console()
    plan = PipelinePlan.load(args.plan)
    spec = args.model or plan.model
    if not spec:
        raise PlanError(f"{args.plan} stores no model spec; pass --model path.py[:attr]")
    if args.schedule not in KINDS:
        raise PlanError(f"--schedule {args.schedule!r}: choose one of {', '.join(KINDS)}")
    chunks = args.chunks if args.schedule == "interleaved" else 1
    con.print(f"training {spec} with {plan.num_stages} stages on {plan.workers} local ranks, "
              f"schedule {args.schedule}, {plan.microbatches} micro-batches of {plan.micro_batch}")
    results = launch(rank_main, plan.workers, timeout=args.timeout,
                     args=(plan.to_dict(), spec, args.schedule, args.epochs, args.lr, chunks,
                           bool(args.timeline), args.max_steps))
    elapsed = max(r["elapsed"] for r in results)
    samples = results[0]["samples"]
    losses = [l for r in results for l in r["losses"]]
    acc = evaluate(spec, [r["state"] for r in results])
    con.print(f"{samples} samples in {elapsed:.2f} s: {samples / elapsed:,.0f} samples/s")
    if losses:
        con.print(f"final loss {sum(losses[-5:]) / len(losses[-5:]):.4f}")
    if acc is not None:
        con.print(f"test accuracy {acc:.2%}")
    if args.timeline:
        events = []
        for r in results:  # draw the last two steps of each rank (the whole run is unreadable)
            fs = sorted(e[4] for e in r["events"] if e[1] == "F")
            cut = fs[-min(len(fs), 2 * plan.microbatches)] if fs else 0.0
            events += [e for e in r["events"] if e[4] >= cut]
        con.print(f"measured bubble fraction {bubble_fraction(events, plan.workers):.1%}")
        con.print(f"timeline written to {draw(events, args.timeline, f'{args.schedule}')}")
    return 0


def add_arguments(p) -> None:
    """Pipeline options of `weft train` (the command itself is wired in weft.train_cli)."""
    p.add_argument("--model", help="model spec path.py[:attr] or module:attr (default: the plan's)")
    p.add_argument("--schedule", default="1f1b",
                   help="gpipe | 1f1b | interleaved | pipedream (with --plan)")
    p.add_argument("--chunks", type=int, default=2, help="chunks per stage for interleaved")
    p.add_argument("--timeline", help="write the pipeline timeline PNG here")
    p.add_argument("--timeout", type=float, default=120.0, help="per-collective timeout (s)")


def train(args) -> int:
    """`weft train --plan`: defaults for options shared with `weft train --policy`."""
    args.epochs = 1 if args.epochs is None else args.epochs
    args.lr = 0.05 if args.lr is None else args.lr
    return _train(args)
