#!/usr/bin/env python
"""Tree packing vs ring vs gloo's built-in collectives, same run, same processes.

On emulated clusters (one network namespace per host, tbf-shaped veth links
scaled from the topology: --mbit-per-gbs Mbit/s per GB/s) and on plain
loopback. Prints a table, the ratios, predicted vs measured time, and the
fraction of the max-flow bound reached. Needs root for the namespace part
(skipped with a reason otherwise).

    python benchmarks/collectives.py            # full: 16 and 64 MiB
    python benchmarks/collectives.py --quick    # < 1 minute
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from _common import emit, figure, parser  # noqa: E402

# gloo on CPU: software overhead per message and per step, memory-bound adds.
# Fitted on this 2-core machine (ranks and the emulated network share the cores)
# against DGX-1-mesh runs with the jumbo-MTU fixture (see docs/collectives.md).
CPU_PARAMS = dict(alpha=10e-6, reduce_bw=0.5e9, step_overhead=20e-6, cores=float(os.cpu_count()),
                  link_efficiency=0.97)
# Loopback: one host, no link to share: every byte a rank sends or receives is
# copied through the kernel by the shared cores (~2.5 GB/s each), plus a large
# per-message cost. The fabric is a star with links too fast to matter.
LOOPBACK_PARAMS = dict(alpha=150e-6, reduce_bw=8e9, step_overhead=100e-6,
                       cores=float(os.cpu_count()), link_efficiency=1.0, copy_bw=2.5e9)
# "auto" (loopback) and "packing" (emulated) time the model's best few candidates
# once on the live ranks and keep the fastest (as WeftCommunicator(measure=True)):
# "auto" its best schedule of each of its top algorithms, "packing" its top
# (trees, piece size) pairs.
MEASURED = 3
MEASURE_REPS = 2
LOOPBACK_REPS = 15
OPS = {"broadcast": "broadcast", "allreduce": "allreduce"}


def _time(fn, reps):
    out = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        out.append(float(t))
    return statistics.median(out)


def plan(fabric, ops, sizes, algs, params=None, measured: int = MEASURED) -> dict:
    """Choose schedules and chunks once, in the parent (the ranks would all repeat it)."""
    from weft.collectives.autotune import ranked
    from weft.collectives.costmodel import CostParams, lower_bound

    params = CostParams(**(params or CPU_PARAMS))
    out = {}
    for op in ops:
        for size in sizes:
            out[op, size, "bound"] = lower_bound(op, fabric, size)
            for alg in algs:
                only = (["packing:1", "packing:2", "packing:4", "packing:8", "packing:16"]
                        if alg == "packing"
                        else None if alg == "auto" else [alg])
                cands, seen = [], set()
                for b in ranked(fabric, op, size, 0, params, algorithms=only):
                    key = b.algorithm if alg == "auto" else (b.algorithm, b.chunk_bytes)
                    if key not in seen and len(cands) < (1 if alg == "ring" else measured):
                        seen.add(key)
                        cands.append((b.schedule, b.chunk_bytes, b.predicted, b.algorithm))
                out[op, size, alg] = cands
    return out


def rank_bench(plan_file: str, ops: list, sizes: list, reps: int, algs: list,
               gloo_reps: int | None = None) -> list[dict]:
    """Runs in every rank; returns rows (identical on all ranks). gloo's built-in
    is timed in the first `gloo_reps` rounds only (default: all)."""
    import pickle

    from weft.collectives.executor import execute

    torch.set_num_threads(1)
    plans = pickle.loads(Path(plan_file).read_bytes())
    me, rows = dist.get_rank(), []
    for op in ops:
        for size in sizes:
            numel = size // 4
            x0 = torch.arange(numel, dtype=torch.float32).remainder_(1000).add_(me)
            bound = plans[op, size, "bound"]
            ref = x0.clone()
            gfn = (lambda: dist.all_reduce(ref)) if op == "allreduce" else (lambda: dist.broadcast(ref, 0))
            gfn()
            want = ref.clone()  # the reference result
            runs, info = {"gloo": gfn}, {"gloo": dict(predicted=None, chunk=None, ok=True)}
            for alg in algs:
                y = x0.clone()
                timed = []
                for sched, chunk, predicted, choice in plans[op, size, alg]:
                    # Timed like gloo's: repeated in place, the input is not reset
                    # inside the timed region (all-reduce values grow, as gloo's do).
                    def run(sched=sched, chunk=chunk, y=y):
                        execute(sched, y, chunk_bytes=chunk, timeout=300)
                    run()
                    timed.append((_time(run, MEASURE_REPS) if len(plans[op, size, alg]) > 1 else 0.0,
                                  (sched, chunk, predicted, choice), run))
                _, (sched, chunk, predicted, choice), run = min(timed, key=lambda c: c[0])
                y.copy_(x0)
                run()
                runs[alg] = run
                info[alg] = dict(ok=torch.equal(y, want), predicted=predicted, chunk=chunk,
                                 choice=choice)
            # interleaved rounds: each contender once per round, so a change in the
            # machine's load hits all of them alike; the median round counts
            times: dict[str, list] = {k: [] for k in runs}
            for i in range(reps):
                for k, fn in runs.items():
                    if k != "gloo" or i < (gloo_reps or reps):
                        times[k].append(_time(fn, 1))
            for k in runs:
                rows.append(dict(op=op, size=size, alg=k, measured=statistics.median(times[k]),
                                 rounds=len(times[k]), bound=bound, **info[k]))
    return rows


def _write_plan(fabric, args, algs, tmpdir, params=None) -> str:
    import pickle

    path = os.path.join(tmpdir, "plan.pkl")
    Path(path).write_bytes(pickle.dumps(plan(fabric, args.ops, args.sizes, algs, params,
                                             1 if args.quick else MEASURED)))
    return path


def _netns_rows(shape: str, args) -> list[dict]:
    from weft.collectives.emulate.netns import NetnsCluster
    from weft.collectives.emulate.shapes import SCALE, SHAPES

    import tempfile

    scale = args.mbit_per_gbs or SCALE[shape]
    with NetnsCluster(SHAPES[shape](), mbit_per_gbs=scale) as c, \
            tempfile.TemporaryDirectory() as tmp:
        algs = ["ring", "packing"]
        # gloo's built-in has no target on the emulated shapes and is by far the
        # slowest there (it sends as if every link were direct): one round of it
        spec = dict(plan_file=_write_plan(c.fabric(), args, algs, tmp), ops=args.ops,
                    sizes=args.sizes, reps=args.reps, algs=algs, gloo_reps=1)
        rows = c.run(f"{Path(__file__).resolve()}:rank_bench", spec, timeout=4 * 3600,
                     op_timeout=600)[0]
    for r in rows:
        r["shape"], r["scale"] = shape, scale
    return rows


def _loopback_rows(args) -> list[dict]:
    from weft.launch import launch
    from weft.collectives.emulate.shapes import star_slow

    import tempfile

    from weft.collectives.fabric import Fabric

    n = args.loopback_ranks
    with tempfile.TemporaryDirectory() as tmp:
        star = Fabric(star_slow(n, fast=1e12, slow=1e12), [f"h{i}" for i in range(n)])
        pf = _write_plan(star, args, ["auto"], tmp, LOOPBACK_PARAMS)
        # loopback collectives take milliseconds: more rounds cost little and tame noise
        rows = launch(rank_bench, n, args=(pf, args.ops, args.sizes, max(args.reps, LOOPBACK_REPS),
                                           ["auto"]),
                      timeout=600)[0]
    for r in rows:
        r["shape"] = f"loopback{n}"
    return rows


def main(argv=None) -> int:
    p = parser(__doc__)  # --quick: 2 MiB, DGX-1 mesh and loopback only (< 1 minute)
    p.add_argument("--shapes", default=None, help="comma list of dgx1-mesh,star4-slow,two-node")
    p.add_argument("--mbit-per-gbs", type=float, default=None,
                   help="emulated Mbit/s per GB/s of topology bandwidth (default: per shape, "
                        "weft.collectives.emulate.shapes.SCALE)")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--loopback-ranks", type=int, default=4)
    p.add_argument("--raw", help="write every measured row (all algorithms) as JSON here")
    p.add_argument("--sizes", dest="size_list", help="comma list of sizes (e.g. 4MB,16MB)")
    p.add_argument("--ops", dest="op_list", help="comma list of broadcast,allreduce (default both)")
    p.add_argument("--no-loopback", action="store_true")
    p.add_argument("--no-netns", action="store_true", help="loopback only")
    args = p.parse_args(argv)
    args.ops = args.op_list.split(",") if args.op_list else list(OPS)
    if any(o not in OPS for o in args.ops):
        p.error(f"--ops: choose from {','.join(OPS)}")
    args.sizes = [2 << 20] if args.quick else [16 << 20, 64 << 20]
    if args.quick and not args.mbit_per_gbs:  # a smoke run: faster links, the model's choice
        args.mbit_per_gbs = 4.0
    if args.size_list:
        from weft.units import parse_size

        args.sizes = [int(parse_size(x)) for x in args.size_list.split(",")]
    shapes = (args.shapes.split(",") if args.shapes else
              ["dgx1-mesh"] if args.quick else ["dgx1-mesh", "star4-slow", "two-node"])
    from weft.atomic import write_json
    from weft.collectives.emulate.netns import available

    rows, t0 = [], time.time()
    ok, why = available()
    if args.no_netns:
        shapes = []
    if ok:
        for s in shapes:
            rows += _netns_rows(s, args)
            if args.raw:  # a later shape failing keeps what is done
                write_json(args.raw, rows, indent=1)
    else:
        print(f"skipping emulated clusters: {why}")
    if not args.no_loopback:
        rows += _loopback_rows(args)
    if args.raw:
        write_json(args.raw, rows, indent=1)
    return report(rows, args, time.time() - t0)


def report(rows, args, elapsed) -> int:
    from rich.console import Console
    from rich.table import Table

    from weft.units import fmt_bytes

    con = Console(width=200)  # the per-shape table is wide
    by = {(r["shape"], r["op"], r["size"], r["alg"]): r for r in rows}
    t = Table("shape", "op", "size", "gloo", "ring", "packing/auto", "choice", "vs ring",
              "vs gloo", "of bound", "predicted", "pred err", "ok", title="collectives (seconds)")
    metrics = []
    for (shape, op, size, alg), r in by.items():
        if alg not in ("packing", "auto"):
            continue
        g = by[shape, op, size, "gloo"]
        ring = by.get((shape, op, size, "ring"))
        vs_ring = ring["measured"] / r["measured"] if ring else None
        vs_gloo = g["measured"] / r["measured"]
        eff = r["bound"] / r["measured"] if not shape.startswith("loopback") else None
        err = r["predicted"] / r["measured"] - 1 if eff is not None else None
        t.add_row(shape, op, fmt_bytes(size), f"{g['measured']:.3f}",
                  f"{ring['measured']:.3f}" if ring else "-", f"{r['measured']:.3f}",
                  f"{r['choice']}/{fmt_bytes(r['chunk'])}" if r["chunk"] else r["choice"],
                  f"{vs_ring:.2f}x" if vs_ring else "-", f"{vs_gloo:.2f}x",
                  f"{eff:.0%}" if eff is not None else "-",
                  f"{r['predicted']:.3f}" if eff is not None else "-",
                  f"{err:+.0%}" if err is not None else "-",
                  "yes" if r["ok"] and (not ring or ring["ok"]) else "NO")
        name = f"{shape}/{op}/{fmt_bytes(size).replace(' ', '')}"
        big = size >= 16 << 20  # the targets are for 16 and 64 MiB (small sizes: a smoke run)
        if vs_ring:
            metrics.append(figure(f"{name}/speedup_vs_ring", vs_ring, "x",
                                  target=1.5 if shape == "dgx1-mesh" and big else None))
        metrics.append(figure(f"{name}/speedup_vs_gloo", vs_gloo, "x",
                              target=0.9 if shape.startswith("loopback") and big else None))
        if eff is not None:
            metrics.append(figure(f"{name}/fraction_of_maxflow_bound", eff, "",
                                  target=0.9 if big else None))
            metrics.append(figure(f"{name}/prediction_error", abs(err), "",
                                  target=0.2 if big else None, better="lower"))
    con.print(t)
    scales = sorted({(r["shape"], r["scale"]) for r in rows if "scale" in r})
    gloo_rounds = max((r["rounds"] for r in rows if "scale" in r and r["alg"] == "gloo"), default=0)
    emit(metrics, args.json, "collectives: figures and targets",
         conditions=f"emulated links (Mbit/s per GB/s of topology bandwidth): {dict(scales)}; "
                    f"bound = max-flow bound on the emulated rates; median of rounds (gloo's "
                    f"built-in on emulated links: {gloo_rounds} round(s)); total {elapsed:.0f} s")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
