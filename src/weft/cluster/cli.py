"""`weft cluster policies | simulate | run` (`weft schedule ...`: a deprecated alias)."""

from __future__ import annotations

import sys
from pathlib import Path

from weft.args import (
    existing_file,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
)
from weft.cluster.model import Cluster, ClusterError

DEPRECATED = "weft: warning: `weft schedule` is deprecated and will be removed in the next release; use `weft cluster`"


def register(subparsers) -> None:
    _add(subparsers, "cluster", "heterogeneity-aware cluster scheduling (Gavel)")
    _add(subparsers, "schedule", "deprecated alias of `weft cluster`", deprecated=True)


def _add(subparsers, name: str, help: str, deprecated: bool = False) -> None:
    def cmd(func):
        if not deprecated:
            return func

        def warned(args):
            print(DEPRECATED, file=sys.stderr)
            return func(args)
        return warned

    p = subparsers.add_parser(name, help=help)
    sub = p.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    p.set_defaults(func=cmd(lambda a: p.print_help() or 0))

    pol = sub.add_parser("policies", help="list scheduling policies")
    pol.set_defaults(func=cmd(_policies))

    sim = sub.add_parser("simulate", help="simulate policies on a trace or generated jobs")
    src = sim.add_mutually_exclusive_group()
    src.add_argument("--trace", help="Gavel .trace file to replay")
    src.add_argument("--jobs-spec", help="weft jobs.yaml to replay")
    sim.add_argument("--skip-unknown", action="store_true",
                     help="with --trace: skip rows whose (job type, scale factor) has no throughput, or scale "
                     "factor 0 (the msr traces have many); prints how many and which")
    sim.add_argument("--semantics", choices=["weft", "gavel"], default="weft",
                     help="weft's simulator (default) or Gavel's round loop and policy flavours (docs/cluster.md)")
    sim.add_argument("--lp-solver", choices=["center", "ecos", "scs"], default="center",
                     help="with --semantics gavel: solve Gavel's LAS, finish-time fairness and min_total_duration "
                     "problems with weft's central-point solver (default) or, as Gavel does, with cvxpy + ECOS "
                     "(or SCS); needs pip install 'weft[gavel]'")
    sim.add_argument("--jobs", type=positive_int, default=300, help="jobs to generate (default 300)")
    sim.add_argument("--rate", type=nonneg_float, default=5.6, help="arrivals per hour, 0 = all at t=0 (default 5.6)")
    sim.add_argument("--seed", type=nonneg_int, default=0)
    sim.add_argument("--multi-gpu", action="store_true", help="scale factors 1/2/4/8 (p=.7/.1/.15/.05)")
    sim.add_argument("--priorities", action="store_true", help="20%% of jobs get weight 5")
    sim.add_argument("--throughputs",
                     help="Gavel throughput JSON (default: simulation_throughputs.json in the Gavel data)")
    sim.add_argument("--gavel-dir", help="Gavel data directory (default: $WEFT_GAVEL_DIR, else the "
                     "shared/data/gavel found above the current directory or weft's sources)")
    sim.add_argument("--cluster", default="36:36:36", help="V100:P100:K80 counts or type=count,... (default 36:36:36)")
    sim.add_argument("--cluster-spec", help="weft cluster.yaml (overrides --cluster/--throughputs)")
    sim.add_argument("--policy", action="append", help="policy name (repeatable; default max_min_fairness)")
    sim.add_argument("--pop", type=positive_int, default=1, help="POP partitions k (default 1 = full solve)")
    sim.add_argument("--round", type=positive_float, default=None, help="round length in seconds (default 360)")
    sim.add_argument("--window", help="LO:HI job indices to average JCT over (default: all)")
    sim.add_argument("--resolve-every", type=positive_float, default=None,
                     help="re-solve the policy at most every this many seconds (default: 0, on every change, "
                     "with --semantics weft; 1920 as in Gavel with --semantics gavel)")
    sim.add_argument("--colocation", type=existing_file, metavar="PROFILES",
                     help="weft.colocation/1 file (memory per accelerator type, a memory profile per job "
                     "type): packed policies share an accelerator only between jobs whose combined memory "
                     "peak fits it (docs/wavelet.md)")
    sim.add_argument("--colocation-rule", choices=["offset", "gang", "both"], default="both",
                     help="with --colocation: combined peak with the best launch offset (Wavelet), with both "
                     "jobs launched together, or each packed policy under both (default) for the JCT effect")
    sim.add_argument("--colocation-unmeasured", choices=["skip", "median"], default="skip",
                     help="with --colocation: a pair that fits but has no measured pair throughput is left out "
                     "(skip, default) or gets the median co-located share of its type (median: a model)")
    sim.add_argument("--out", help="directory for results.json and jct_cdf.png")
    sim.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true",
                     help="no progress bar")
    sim.set_defaults(func=cmd(_simulate))

    run = sub.add_parser("run", help="run jobs (model specs or commands) on local accelerator slots")
    run.add_argument("cluster", help="cluster.yaml (slots per type, throughputs used to emulate speed)")
    run.add_argument("jobs", help="jobs.yaml (each job a model spec or a command; see docs/cluster.md)")
    run.add_argument("--policy", default="max_min_fairness")
    run.add_argument("--round", type=positive_float, default=None, help="round length in seconds (default from cluster.yaml)")
    run.add_argument("--workdir", help="checkpoints and logs (default: a fresh runs/cluster/<time>)")
    run.add_argument("--out", help="results JSON (default: <workdir>/results.json)")
    run.add_argument("--colocation", type=existing_file, metavar="PROFILES",
                     help="weft.colocation/1 file, needed by a packed policy: two jobs share slots only "
                     "when their combined memory peak fits (docs/wavelet.md)")
    run.add_argument("--colocation-rule", choices=["offset", "gang"], default="offset",
                     help="with --colocation: the combined peak with the best launch offset (default) or "
                     "with both jobs launched together")
    run.add_argument("--colocation-unmeasured", choices=["skip", "median"], default="skip",
                     help="with --colocation: as for simulate")
    run.add_argument("--quiet", action="store_true", help="do not print each round's leases")
    run.set_defaults(func=cmd(_run))


def _policies(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from weft.cluster.policies import POLICIES
    t = Table(title="weft cluster policies (each accepts --pop K)")
    t.add_column("name")
    t.add_column("objective")
    t.add_column("description")
    for name, factory in POLICIES.items():
        pol = factory()
        t.add_row(name, pol.sense, pol.description)
    Console().print(t)
    return 0


def _window(text, n):
    if not text:
        return None
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise ClusterError(f"--window {text!r}: expected LO:HI job indices") from None
    if not 0 <= lo < hi <= n:
        raise ClusterError(f"--window {text!r}: must satisfy 0 <= LO < HI <= {n} (number of jobs)")
    return (lo, hi)


def _simulate(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from weft.cluster.generate import generate_jobs
    from weft.cluster.policies import get_policy
    from weft.cluster.report import plot_jct_cdf, write_results
    from weft.cluster.simulator import simulate
    from weft.cluster.spec import load_cluster, load_jobs
    from weft.cluster.throughputs import ThroughputTable
    from weft.cluster.trace import load_trace

    round_s = args.round
    if args.cluster_spec:
        spec = load_cluster(args.cluster_spec)
        cluster, table = spec.cluster, spec.table
        round_s = round_s or spec.round_seconds
    else:
        cluster = Cluster.parse(args.cluster)
        if args.throughputs:
            tp = Path(args.throughputs)
        else:
            from weft.cluster.gavel import gavel_dir
            tp = gavel_dir(args.gavel_dir) / "simulation_throughputs.json"
        table = ThroughputTable.load(tp, cluster.types)
    round_s = round_s or 360.0
    if args.skip_unknown and not args.trace:
        raise ClusterError("--skip-unknown: only with --trace")
    if args.lp_solver != "center" and args.semantics != "gavel":
        raise ClusterError(f"--lp-solver {args.lp_solver}: only with --semantics gavel")
    if args.trace:
        jobs, skipped = load_trace(args.trace, table, args.skip_unknown)
        if skipped:
            kinds = ", ".join(f"{t} x{s} ({n})" for (t, s), n in sorted(skipped.items()))
            print(f"weft: warning: {args.trace}: skipped {sum(skipped.values())} row(s) of "
                  f"{len(skipped)} unknown (type, scale factor): {kinds}", file=sys.stderr)
    elif args.jobs_spec:
        jobs = load_jobs(args.jobs_spec, table)
    else:
        jobs = generate_jobs(table, args.jobs, args.rate or None, args.seed, args.multi_gpu, args.priorities)
    window = _window(args.window, len(jobs))
    policies = [get_policy(name, pop_k=args.pop, seed=args.seed) for name in args.policy or ["max_min_fairness"]]
    tables = _colocation_tables(args, table, policies)
    results = []
    for policy in policies:
        for label, tab in (tables if policy.packed else [("", table)]):
            r = simulate(jobs, cluster, tab, policy, round_s, window, progress=not args.no_progress,
                         resolve_every=args.resolve_every, semantics=args.semantics, seed=args.seed,
                         lp_solver=args.lp_solver)
            if label:
                r.policy = f"{r.policy} [{label}]"
                r.extra["colocation"] = label
            results.append(r)
    t = Table(title=f"{len(jobs)} jobs on {cluster.counts}, {round_s:g} s rounds, semantics {args.semantics}")
    t.add_column("policy", no_wrap=True)
    for col in ("avg JCT (h)", "vs first", "makespan (h)", "util", "FTF mean", "FTF max", "solves"):
        t.add_column(col)
    base = results[0].avg_jct
    for r in results:
        s = r.summary()
        t.add_row(r.policy, f"{s['avg_jct_hours']:.2f}", f"{base / r.avg_jct:.2f}x", f"{s['makespan_hours']:.1f}",
                  f"{s['utilization']:.2f}", f"{s['ftf_mean']:.2f}", f"{s['ftf_max']:.2f}", str(s["solves"]))
    Console().print(t)
    if args.out:
        out = Path(args.out)
        write_results(out / "results.json", results, {"cluster": cluster.counts, "round_seconds": round_s,
                                                      "jobs": len(jobs), "window": window})
        plot_jct_cdf(out / "jct_cdf.png", results)
        print(f"wrote {out / 'results.json'} and {out / 'jct_cdf.png'}")
    return 0


def _colocation_tables(args, table, policies):
    """[(label, throughput table)] the packed policies run with: Gavel's table unchanged
    without --colocation, else the table whose pairs fit memory under each chosen rule."""
    if args.colocation is None:
        if args.colocation_rule != "both" or args.colocation_unmeasured != "skip":
            raise ClusterError("--colocation-rule/--colocation-unmeasured: only with --colocation")
        return [("", table)]
    if not any(p.packed for p in policies):
        raise ClusterError(f"--colocation {args.colocation}: needs a packed policy "
                           "(--policy max_min_fairness_packed or min_makespan_packed)")
    from weft.cluster.colocation import CoLocation

    rules = ["offset", "gang"] if args.colocation_rule == "both" else [args.colocation_rule]
    out = []
    for rule in rules:
        co = CoLocation.load(args.colocation, rule=rule, unmeasured=args.colocation_unmeasured)
        missing = sorted({k[0] for k in table.keys} - set(co.profiles))
        if missing and rule == rules[0]:
            print(f"weft: warning: {args.colocation}: no memory profile for {len(missing)} job type(s) "
                  f"(never co-located): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                  file=sys.stderr)
        summary = co.summary(table)
        fits = ", ".join(f"{t}: {n['fit_' + rule]}/{n['pairs']} pairs fit" for t, n in summary.items())
        print(f"co-location rule {rule}: {fits}")
        out.append((f"{rule} co-location", co.table(table)))
    return out


def _run(args) -> int:
    from weft.cluster.executor import check_jobs, run_jobs
    from weft.cluster.spec import load_cluster, load_jobs
    from weft.runs import run_dir

    spec = load_cluster(args.cluster)
    jobs = load_jobs(args.jobs, spec.table)
    if args.round is not None and not args.round > 0:
        raise ClusterError(f"--round {args.round:g}: must be > 0")
    co = None
    if args.colocation is not None:
        from weft.cluster.colocation import CoLocation
        co = CoLocation.load(args.colocation, rule=args.colocation_rule,
                             unmeasured=args.colocation_unmeasured)
    elif args.colocation_rule != "offset" or args.colocation_unmeasured != "skip":
        raise ClusterError("--colocation-rule/--colocation-unmeasured: only with --colocation")
    check_jobs(jobs, spec, args.policy, Path(args.workdir) if args.workdir else None, co)
    if co is not None and not co.table(spec.table).pair:
        print(f"weft: warning: {args.colocation}: no pair of job types both fits an accelerator's memory "
              f"(rule {co.rule}) and has a pair throughput in {args.cluster}'s table; nothing will share",
              file=sys.stderr)
    workdir = Path(args.workdir) if args.workdir else run_dir("runs/cluster")
    out = args.out or workdir / "results.json"
    res = run_jobs(jobs, spec, args.policy, workdir=workdir,
                   round_seconds=args.round or spec.round_seconds, out=out, verbose=not args.quiet,
                   colocation=co)
    shared = len(res.get("colocation", {}).get("shared_starts", []))
    print(f"all {len(res['jct'])} jobs finished; average JCT {sum(res['jct'].values()) / len(res['jct']):.1f} s, "
          f"{res['preemptions']} preemptions{f', {shared} co-located starts' if co else ''}; wrote {out}")
    return 0
