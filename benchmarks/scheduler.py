"""Gavel reproduction: average JCT of heterogeneity-agnostic vs aware LAS (vs aware
LAS with space sharing) on the paper's simulated cluster, and policy solve time.

    python benchmarks/scheduler.py            # Gavel's figure: JCT over jobs 4000-5000 (~10 min on 2 cores)
    python benchmarks/scheduler.py --semantics gavel   # the same in Gavel's semantics (no space sharing)
    python benchmarks/scheduler.py --quick    # < 1 min: JCT over jobs 100-180 (not steady state)
    python benchmarks/scheduler.py --json out.json

The default is the configuration of Gavel's LAS figure (continuous single-GPU
jobs): 36 V100 + 36 P100 + 36 K80, 360 s rounds, jobs generated as in the paper
(Poisson arrivals at --rate 5.6 jobs/h), average JCT over jobs 4000-5000, with
arrivals continuing until those jobs are done, and the allocation re-solved at
most every 1920 s. Gavel's notebooks report 96.0 h (agnostic), 29.0 h (aware)
and 19.6 h (aware + space sharing) at 5.6 jobs/h: 3.3x and 4.9x (mean of seeds 0-2;
here one seed, --seed).

The simulation stops once the window's jobs are done, so generating many jobs
costs little: by default 8x the window's end (``--jobs``); a run whose
arrivals still ran out before the window finished is flagged in the table.
The agnostic baseline places jobs type-blind (weft's semantics: one priority
queue over (job, type) pairs; Gavel's: the type order shuffled every round), so
it does not quietly get the fastest type whenever one is free.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import emit, figure, parser  # also puts weft's sources first on the path
from rich.console import Console
from rich.table import Table

from weft.cluster.gavel import gavel_dir
from weft.cluster.generate import generate_jobs
from weft.cluster.model import Cluster, ClusterError
from weft.cluster.policies import get_policy
from weft.cluster.policies.max_min_fairness import MaxMinFairness
from weft.cluster.policies.pop import Pop
from weft.cluster.problem import build_problem
from weft.cluster.simulator import simulate
from weft.cluster.throughputs import ThroughputTable

PAPER = {"max_min_fairness_agnostic": 96.0, "max_min_fairness": 29.0, "max_min_fairness_packed": 19.6}


def jct_part(table, cluster, args, metrics, console):
    jobs = generate_jobs(table, args.jobs, args.rate, seed=args.seed)
    lo, hi = args.window
    t = Table(title=f"Average JCT, jobs {lo}-{hi} at {args.rate} jobs/h (arrivals continue), seed {args.seed}, "
              f"re-solve every {args.resolve_every:.0f} s, semantics {args.semantics}")
    t.add_column("policy", no_wrap=True)
    for col in ("JCT h", "vs agn", "Gavel h", "Gavel x", "util", "solves", "sim s"):
        t.add_column(col)
    base = None
    for name, paper_h in PAPER.items():
        if args.semantics == "gavel" and get_policy(name).packed:
            t.add_row(name + " (weft only)", "n/a", "", f"{paper_h:.1f}", "", "", "", "")
            continue
        r = simulate(jobs, cluster, table, get_policy(name, seed=args.seed), 360.0, (lo, hi),
                     progress=not args.no_progress, resolve_every=args.resolve_every,
                     semantics=args.semantics, seed=args.seed)
        h = r.avg_jct / 3600
        base = base or h
        label = name + (" (arrivals ran out: raise --jobs)" if r.extra.get("arrivals_ran_out") else "")
        t.add_row(label, f"{h:.1f}", f"{base / h:.2f}x", f"{paper_h:.1f}",
                  f"{PAPER['max_min_fairness_agnostic'] / paper_h:.1f}x", f"{r.utilization:.2f}",
                  str(r.solves), f"{r.wall_seconds:.0f}")
        metrics.append(figure(f"avg_jct_{name}", h, "h", better="lower"))
        if name != "max_min_fairness_agnostic":
            metrics.append(figure(f"jct_speedup_{name}_vs_agnostic", base / h, "x",
                                  target=round(PAPER["max_min_fairness_agnostic"] / paper_h, 2)))
    console.print(t)


def _timed(policy, prob, reps):
    best, alloc = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        alloc = policy.solve(prob)
        best = min(best, time.perf_counter() - t0)
    return best, alloc


def solve_part(table, cluster, args, metrics, console):
    t = Table(title="aware LAS solve time, single-accelerator jobs, one LP row per job (no class aggregation)")
    for col in ("active jobs", "full (s)", "POP k=8 (s)", "POP speedup", "POP objective / full", "aggregated (s)"):
        t.add_column(col)
    for n in args.sizes:
        jobs = generate_jobs(table, n, None, seed=args.seed)
        prob = build_problem(jobs, cluster, table)
        reps = 1 if n > 4096 or args.quick else 3
        full_s, full = _timed(MaxMinFairness(aggregate=False), prob, reps)
        pop_s, pop = _timed(Pop(MaxMinFairness(aggregate=False), 8, seed=args.seed), prob, reps)
        agg_s, _ = _timed(get_policy("max_min_fairness"), prob, reps)
        ratio = pop.objective / full.objective
        t.add_row(str(n), f"{full_s:.3f}", f"{pop_s:.3f}", f"{full_s / pop_s:.1f}x", f"{ratio:.4f}", f"{agg_s:.3f}")
        metrics += [
            figure(f"solve_s_full_{n}", full_s, "s", target=1.0 if n == 2048 else None, better="lower"),
            figure(f"solve_s_pop8_{n}", pop_s, "s", target=2.0 if n == 8192 else None, better="lower"),
            figure(f"pop8_objective_gap_{n}", 1 - ratio, "fraction", target=0.01 if n == 8192 else None,
                   better="lower"),
        ]
    console.print(t)


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    ap.add_argument("--jobs", type=int, help="jobs to generate (default: 8x the window's end); the run stops "
                    "when the window is done, later jobs are competition as in Gavel")
    ap.add_argument("--window", help="LO:HI jobs to average JCT over (default 4000:5000 as in Gavel; quick 100:180)")
    ap.add_argument("--semantics", choices=["weft", "gavel"], default="weft",
                    help="weft's simulator (default) or Gavel's (docs/cluster.md); space sharing is weft's only")
    ap.add_argument("--rate", type=float, default=5.6, help="jobs per hour (default 5.6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolve-every", type=float, default=1920.0,
                    help="re-solve at most every this many seconds (Gavel's simulator: 1920; 0 = on every change)")
    ap.add_argument("--sizes", help="comma-separated active-job counts for solve time (default 1024,2048,8192)")
    ap.add_argument("--skip-jct", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--gavel-dir", help="Gavel data directory (default: $WEFT_GAVEL_DIR, else the "
                    "shared/data/gavel found above the current directory or weft's sources)")
    args = ap.parse_args(argv)
    try:
        gavel = gavel_dir(args.gavel_dir)
    except ClusterError as exc:
        print(f"scheduler.py: error: {exc}", file=sys.stderr)
        return 2
    win = args.window or ("100:180" if args.quick else "4000:5000")
    args.window = tuple(int(x) for x in win.split(":"))
    args.jobs = args.jobs or 8 * args.window[1]
    sizes = args.sizes or ("1024" if args.quick else "1024,2048,8192")
    args.sizes = [int(x) for x in sizes.split(",")]
    table = ThroughputTable.load(gavel / "simulation_throughputs.json", ["v100", "p100", "k80"])
    cluster = Cluster({"v100": 36, "p100": 36, "k80": 36})
    console, metrics = Console(width=max(Console().width, 110)), []
    if not args.skip_jct:
        jct_part(table, cluster, args, metrics, console)
    solve_part(table, cluster, args, metrics, console)
    return emit(metrics, args.json, "Gavel LAS reproduction and policy solve time", conditions=(
        f"simulated 36 V100 + 36 P100 + 36 K80, Gavel's throughput table, {args.rate} jobs/h, seed "
        f"{args.seed}, JCT over jobs {args.window[0]}-{args.window[1]}, re-solve every "
        f"{args.resolve_every:.0f} s, semantics {args.semantics}; solve times on this machine "
        f"for {', '.join(map(str, args.sizes))} active jobs"))


if __name__ == "__main__":
    sys.exit(main())
