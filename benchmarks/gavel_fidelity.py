"""Fidelity to Gavel's own simulator, job by job.

Runs every reference case of ``<gavel data>/reference/gavel_results.json`` (Gavel's
simulator at c4fa400 on the public traces: 27 runs of (trace, cluster, policy),
seed 0, 360 s rounds, no space sharing) through weft's simulator and prints, per
case: Gavel's and weft's average JCT and makespan, their differences, and the
share of jobs whose JCT is within 5% of Gavel's.

    python benchmarks/gavel_fidelity.py                    # all 27 cases, semantics=gavel (~4 min)
    python benchmarks/gavel_fidelity.py --semantics weft   # weft's own semantics, for the side-by-side
    python benchmarks/gavel_fidelity.py --quick            # the 11 cases on 8:16:24 that take < 1 min
    python benchmarks/gavel_fidelity.py --ablate shuffle   # without one of Gavel's behaviours
    python benchmarks/gavel_fidelity.py --lp-solver reference  # Gavel's LPs through cvxpy + the solver of
                                                               # each reference run (ECOS, SCS), needs weft[gavel]
    python benchmarks/gavel_fidelity.py --json out.json

Targets (semantics=gavel): average JCT within 5% and makespan within 2% of
Gavel's on every case, and >= 70% of jobs within 5% of Gavel's JCT.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, figure, parser

from weft.cluster.gavel import gavel_dir
from weft.cluster.gavel_policies import weft_policy_name
from weft.cluster.gavel_sim import ABLATIONS
from weft.cluster.model import Cluster, ClusterError
from weft.cluster.policies import get_policy
from weft.cluster.simulator import simulate
from weft.cluster.throughputs import ThroughputTable
from weft.cluster.trace import read_trace
from weft.files import read_json

JCT_TOL, MAKESPAN_TOL, JOBS_WITHIN, JOB_TOL = 0.05, 0.02, 0.70, 0.05


def trace_path(gavel: Path, case: dict) -> Path:
    return gavel / "reference" / "2869ce.10col.trace" if case["converted"] else gavel / case["trace"]


def short(case: dict) -> str:
    name = Path(case["trace"]).stem
    return {"max_min_fairness": "phys-las", "minimize_makespan": "phys-static", "2869ce": "msr-2869ce"}.get(name, name)


def run_case(gavel: Path, case: dict, semantics: str, tables: dict, ablate=(), lp_solver: str = "center") -> dict:
    tp = case["throughputs"]
    if tp not in tables:
        tables[tp] = ThroughputTable.load(gavel / tp, ["v100", "p100", "k80"])
    table = tables[tp]
    jobs = read_trace(trace_path(gavel, case), table)
    cluster = Cluster.parse(case["cluster"])
    policy = get_policy(weft_policy_name(case["policy"]), seed=case["seed"])
    t0 = time.perf_counter()
    r = simulate(jobs, cluster, table, policy, float(case["round_s"]), semantics=semantics,
                 seed=case["seed"], resolve_every=None if semantics == "gavel" else 0.0,
                 ablate=ablate if semantics == "gavel" else (), lp_solver=lp_solver)
    wall = time.perf_counter() - t0
    ref = {int(k): v * 3600 for k, v in case["per_job_jct_h"].items()}
    common = [m for m in ref if m in r.jct]
    within = sum(abs(r.jct[m] - ref[m]) <= JOB_TOL * ref[m] for m in common) / max(len(ref), 1)
    jct = sum(r.jct[m] for m in common) / max(len(common), 1) / 3600
    return {"case": f"{short(case)} {case['cluster']} {case['policy']}", "gavel_jct": case["avg_jct_h"],
            "weft_jct": jct, "gavel_makespan": case["makespan_h"], "weft_makespan": r.makespan / 3600,
            "within": within, "missing": len(ref) - len(common), "wall": wall,
            "solve": r.solve_seconds, "solves": r.solves}


def main(argv=None) -> int:
    ap = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--semantics", choices=["gavel", "weft"], default="gavel")
    ap.add_argument("--gavel-dir", help="Gavel data directory (default: $WEFT_GAVEL_DIR, else the "
                    "shared/data/gavel found above the current directory or weft's sources)")
    ap.add_argument("--ablate", action="append", default=[], choices=sorted(ABLATIONS),
                    help="leave out one of Gavel's behaviours (semantics=gavel; repeatable), to measure its effect")
    ap.add_argument("--lp-solver", choices=["center", "ecos", "scs", "reference"], default="center",
                    help="semantics=gavel: Gavel's LPs by weft's central-point solver (default), or by cvxpy + "
                    "ECOS / SCS as Gavel solves them, or + the solver each reference run used (needs weft[gavel])")
    ap.add_argument("--policy", action="append", help="only cases of this Gavel policy name (repeatable)")
    ap.add_argument("--case", action="append", help="only cases whose label contains this text (repeatable)")
    args = ap.parse_args(argv)
    try:
        gavel = gavel_dir(args.gavel_dir)
        cases = read_json(gavel / "reference" / "gavel_results.json", ClusterError, "reference results")
    except ClusterError as exc:
        print(f"gavel_fidelity.py: error: {exc}", file=sys.stderr)
        return 2
    if args.quick:
        cases = [c for c in cases if c["cluster"] == "8:16:24"]
    if args.policy:
        cases = [c for c in cases if c["policy"] in args.policy]
    if args.case:
        cases = [c for c in cases if any(s in f"{short(c)} {c['cluster']} {c['policy']}" for s in args.case)]
    from rich.console import Console
    from rich.table import Table

    if args.lp_solver != "center" and args.semantics != "gavel":
        print("gavel_fidelity.py: error: --lp-solver: only with --semantics gavel", file=sys.stderr)
        return 2
    left_out = f", without {'/'.join(args.ablate)}" if args.ablate else ""
    left_out += f", LP solver {args.lp_solver}" if args.lp_solver != "center" else ""
    t = Table(title=f"weft (semantics={args.semantics}{left_out}) vs Gavel's simulator (c4fa400), seed 0, 360 s rounds")
    for col in ("trace cluster policy", "Gavel JCT h", "weft JCT h", "diff", "Gavel mk h", "weft mk h", "diff",
                "jobs within 5%", "sim s", "solve s"):
        t.add_column(col, no_wrap=col.startswith("trace"))
    figures, rows = [], []
    tables: dict = {}
    for case in cases:
        try:
            solver = case["solver"].lower() if args.lp_solver == "reference" else args.lp_solver
            row = run_case(gavel, case, args.semantics, tables, args.ablate, solver)
        except ClusterError as exc:
            print(f"gavel_fidelity.py: error: {exc}", file=sys.stderr)
            return 2
        rows.append(row)
        dj = row["weft_jct"] / row["gavel_jct"] - 1
        dm = row["weft_makespan"] / row["gavel_makespan"] - 1
        ok = [abs(dj) <= JCT_TOL, abs(dm) <= MAKESPAN_TOL, row["within"] >= JOBS_WITHIN]

        def mark(text, good):
            return text if good else f"[red]{text}[/]"
        t.add_row(row["case"], f"{row['gavel_jct']:.3f}", f"{row['weft_jct']:.3f}", mark(f"{dj:+.1%}", ok[0]),
                  f"{row['gavel_makespan']:.2f}", f"{row['weft_makespan']:.2f}", mark(f"{dm:+.1%}", ok[1]),
                  mark(f"{row['within']:.0%}", ok[2]) + (f" ({row['missing']} failed)" if row["missing"] else ""),
                  f"{row['wall']:.1f}", f"{row['solve']:.1f}")
        name = row["case"].replace(" ", "/")
        figures += [figure(f"{name}/avg_jct_rel_diff", abs(dj), "fraction", JCT_TOL, "lower"),
                    figure(f"{name}/makespan_rel_diff", abs(dm), "fraction", MAKESPAN_TOL, "lower"),
                    figure(f"{name}/jobs_within_5pct", row["within"], "fraction", JOBS_WITHIN, "higher")]
    Console(width=160).print(t)
    met = sum(f["value"] <= f["target"] if f["better"] == "lower" else f["value"] >= f["target"] for f in figures)
    within = sum(r["within"] for r in rows) / max(len(rows), 1)
    mean_dj = sum(abs(r["weft_jct"] / r["gavel_jct"] - 1) for r in rows) / max(len(rows), 1)
    print(f"{met} of {len(figures)} targets met over {len(rows)} cases; mean |avg JCT diff| {mean_dj:.1%}, "
          f"mean share of jobs within 5% {within:.0%}")
    if args.json:
        emit(figures, args.json, "gavel fidelity figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
