"""`weft collectives plan`: choose an algorithm for a collective on a topology."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from weft.errors import WeftError
from weft.args import nonneg_float, nonneg_int, output_file, size
from weft.units import fmt_bytes, fmt_rate, fmt_seconds

_OPS = {"allreduce": "allreduce", "all_reduce": "allreduce", "broadcast": "broadcast",
        "reduce": "reduce", "reduce_scatter": "reduce_scatter", "reducescatter": "reduce_scatter",
        "all_gather": "all_gather", "allgather": "all_gather"}


class PlanInputError(WeftError, ValueError):
    pass


def _algorithm(text: str) -> str:
    import argparse

    from weft.collectives.autotune import check_algorithm

    if text == "auto":
        return text
    try:
        return check_algorithm(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or auto") from None


def _op(text: str) -> str:
    import argparse

    op = _OPS.get(text.lower())
    if op is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one of {sorted(set(_OPS.values()))}")
    return op


def _plan(args) -> int:
    from weft.collectives.autotune import ranked
    from weft.collectives.costmodel import CostParams
    from weft.collectives.fabric import Fabric
    from weft.topology.io import resolve

    op, size = args.op, int(args.size)
    topo = resolve(args.topology)
    devices = args.devices.split(",") if args.devices else None
    fabric = Fabric(topo, devices)
    if not 0 <= args.root < fabric.n:
        raise PlanInputError(f"--root {args.root}: not a rank of {fabric.n}")
    params = CostParams(alpha=args.alpha, reduce_bw=args.reduce_bw)
    algs = None if args.algorithm == "auto" else [args.algorithm]
    try:
        r = ranked(fabric, op, size, args.root, params, algs)
    except ValueError as exc:
        raise PlanInputError(str(exc)) from None
    best = r[0]
    per_alg = {}
    for c in r:
        per_alg.setdefault(c.algorithm, c)
    trees = best.schedule.trees
    if args.json:
        print(json.dumps({
            "topology": topo.name, "op": op, "bytes": size, "algorithm": best.algorithm,
            "chunk_bytes": best.chunk_bytes, "predicted_s": best.predicted, "bound_s": best.bound,
            "trees": [{"parent": {fabric.devices[c]: fabric.devices[p] for c, p in t.items()},
                       "weight": w} for t, w in trees],
            "candidates": [{"algorithm": a, "chunk_bytes": c.chunk_bytes,
                            "predicted_s": c.predicted} for a, c in per_alg.items()]}, indent=1))
    else:
        con = Console()
        con.print(f"[bold]{op}[/bold] of {fmt_bytes(size)} on {topo.summary()}; "
                  f"{fabric.n} ranks on {', '.join(fabric.devices)}")
        t = Table("algorithm", "best chunk", "predicted", "algo bandwidth", "of bound")
        for a, c in per_alg.items():
            t.add_row(a, fmt_bytes(c.chunk_bytes), fmt_seconds(c.predicted),
                      fmt_rate(size / c.predicted), f"{c.bound / c.predicted:.0%}")
        con.print(t)
        con.print(f"chosen: [bold]{best.algorithm}[/bold], chunk {fmt_bytes(best.chunk_bytes)}, "
                  f"predicted {fmt_seconds(best.predicted)}, max-flow bound "
                  f"{fmt_seconds(best.bound)} ({best.bound / best.predicted:.0%})")
        if trees:
            tt = Table("tree", "share", "edges (parent -> child)")
            total = sum(w for _, w in trees)
            for i, (par, w) in enumerate(trees):
                edges = ", ".join(f"{fabric.devices[p]}->{fabric.devices[c]}"
                                  for c, p in sorted(par.items()))
                tt.add_row(str(i), f"{w / total:.1%}", edges)
            con.print(tt)
    if args.out:
        from weft.collectives.plot import draw_trees

        if not trees:  # ring/shard schedules: show the ring as one cycle
            order = [t.src for t in best.schedule.steps[0]] if best.schedule.steps else []
            trees = [({order[(i + 1) % len(order)]: order[i] for i in range(len(order) - 1)}, 1.0)]
        path = draw_trees(fabric, trees, args.out,
                          f"{best.algorithm} {op} {fmt_bytes(size)} on {topo.name}")
        if not args.json:
            print(f"wrote {path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("collectives", help="plan topology-aware collectives")
    csub = p.add_subparsers(dest="collectives_command", metavar="ACTION", required=True)
    s = csub.add_parser("plan", help="choose trees/ring and chunk size; predict time and bound")
    s.add_argument("--topology", default="dgx1", help="YAML file or builder (dgx1, ring:8, ...)")
    s.add_argument("--op", type=_op, default="allreduce",
                   help="allreduce, broadcast, reduce, reduce_scatter, all_gather")
    s.add_argument("--size", type=size, default="256MB", help="message size, e.g. 256MB")
    s.add_argument("--algorithm", type=_algorithm, default="auto",
                   help="auto, ring, dbtree, flat, packing, packing:K")
    s.add_argument("--root", type=nonneg_int, default=0, help="root rank (broadcast, reduce)")
    s.add_argument("--devices", help="comma-separated devices, one per rank (default: all compute)")
    s.add_argument("--alpha", type=nonneg_float, default=5e-6,
                   help="seconds of overhead per message")
    s.add_argument("--reduce-bw", type=size, default="200GB/s", help="rate of local reduction")
    s.add_argument("--out", type=output_file, help="draw the chosen trees to this PNG")
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    s.set_defaults(func=_plan)
