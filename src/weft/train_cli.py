"""`weft train`: one command for a pipeline plan (`--plan`) or an adaptation policy (`--policy`).

The options of each mode live with their subsystem (weft.parallel.cli, weft.adapt.cli);
this file only chooses between them, so neither subsystem imports the other.
"""

from __future__ import annotations


def _train(args) -> int:
    if args.plan:
        from weft.parallel.cli import train

        return train(args)
    from weft.adapt.cli import train

    return train(args)


def register(sub) -> None:
    from weft.adapt.cli import add_arguments as adapt_arguments
    from weft.args import positive_float, positive_int
    from weft.parallel.cli import add_arguments as pipeline_arguments

    p = sub.add_parser("train", help="train with a plan (--plan) or an adaptation policy "
                                     "(--policy)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", help="a weft.plan/1 plan (YAML/JSON, examples/plans/; on "
                                     "--nproc-per-node local ranks, default 4) or a pipeline "
                                     "plan JSON written by `weft plan pipeline`")
    mode.add_argument("--policy", help="adaptation policy YAML (see examples/policy.yaml)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--max-steps", dest="max_steps", type=positive_int,
                   help="stop after this many steps")
    p.add_argument("--lr", type=positive_float,
                   help="learning rate (weft.plan/1: Adam at this rate; default the spec's "
                        "optimizer(params), else Adam at 1e-3)")
    p.add_argument("--out", default="runs",
                   help="folder for run directories (default runs/); --policy and weft.plan/1 "
                        "plans write <out>/<timestamp>/report.json and loss.png")
    g = p.add_argument_group("plans (--plan)")
    pipeline_arguments(g)
    g = p.add_argument_group("adaptive (--policy)")
    adapt_arguments(g)
    p.set_defaults(func=_train)

