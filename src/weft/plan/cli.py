"""`weft plan show PLAN --model SPEC [--world N]`: the mesh and what each rank holds.

Added to the `weft plan` command (weft.planner.cli makes it) by `add_show(subparsers)`.
Nothing starts a process: the plan is checked against the model as weft.parallelize would
check it, and errors name the file, the field and the value (exit status 2).
"""

from __future__ import annotations


def _show(args) -> int:
    from weft.plan.describe import show

    print(show(args.plan, args.model, args.world, params=not args.brief))
    return 0


def add_show(psub) -> None:
    """Register `show` under the `weft plan` sub-command parser `psub`."""
    from weft.args import positive_int

    q = psub.add_parser("show", help="print a weft.plan/1 plan's mesh and what each rank holds")
    q.add_argument("plan", help="plan file (YAML or JSON, format weft.plan/1)")
    q.add_argument("--model", required=True,
                   help="model spec: path.py[:attr] or module:attr (attr default model)")
    q.add_argument("--world", type=positive_int,
                   help="number of ranks (needed when a mesh degree is -1)")
    q.add_argument("--brief", action="store_true",
                   help="one line per rank (no per-parameter lines)")
    q.set_defaults(func=_show)
