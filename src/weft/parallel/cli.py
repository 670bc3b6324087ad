"""`weft train --plan FILE`: a weft.plan/1 plan (weft.parallelize, in weft.parallel.run) or a
pipeline plan from `weft plan pipeline` (weft's own pipeline runtime), by the file's format."""

from __future__ import annotations


def add_arguments(p) -> None:
    """Options of `weft train --plan` (the command itself is wired in weft.train_cli)."""
    from weft.args import nonneg_int, output_dir, positive_float, positive_int, size

    p.add_argument("--model", help="model spec path.py[:attr] or module:attr (a pipeline plan "
                                   "has a default: the one it was planned for)")
    p.add_argument("--global-batch", dest="global_batch", type=positive_int, default=32,
                   help="weft.plan/1: samples per step over all replicas (default 32)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="weft.plan/1: data order seed")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (weft.plan/1) or progress lines (--policy)")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto",
                   help="weft.plan/1: process-group backend (auto: nccl when every local rank "
                        "has a GPU, else gloo)")
    p.add_argument("--device-memory", dest="device_memory", type=size,
                   help="weft.plan/1: memory per device for the plan check, e.g. 16GiB "
                        "(default: the GPU's; unknown on the CPU)")
    p.add_argument("--save", type=output_dir,
                   help="weft.plan/1: write a checkpoint folder here at the end (loads under "
                        "any other plan)")
    p.add_argument("--resume", help="continue from this checkpoint folder (weft.plan/1 plans; "
                                    "--policy: the adaptive run's, with any number of workers, "
                                    "checkpointing on into it)")
    p.add_argument("--schedule", default="1f1b",
                   help="pipeline plans: gpipe | 1f1b | interleaved | pipedream | ticktock "
                        "(two micro-batch waves whose memory peaks interleave, docs/wavelet.md; "
                        "a weft.plan/1 plan names its own in pipeline.schedule)")
    p.add_argument("--chunks", type=positive_int, default=2,
                   help="pipeline plans: chunks per stage for interleaved")
    p.add_argument("--timeline", help="pipeline plans: write the pipeline timeline PNG here")
    p.add_argument("--timeout", type=positive_float, default=120.0,
                   help="per-collective timeout (s)")


def train(args) -> int:
    """`weft train --plan`: a weft.plan/1 plan (weft.parallel.run.train_plan), or a pipeline
    plan (weft.parallel.pipeline.train.train_plan) with the defaults for options shared with
    `weft train --policy`."""
    from weft.parallel.run import plan_kind, train_plan

    if plan_kind(args.plan) == "weft":
        return train_plan(args)
    from rich.console import Console

    from weft.parallel.pipeline.train import train_plan as train_pipeline

    train_pipeline(args.plan, args.model, args.schedule,
                   epochs=1 if args.epochs is None else args.epochs,
                   lr=0.05 if args.lr is None else args.lr, chunks=args.chunks,
                   timeline=args.timeline, timeout=args.timeout, max_steps=args.max_steps,
                   console=Console())
    return 0
