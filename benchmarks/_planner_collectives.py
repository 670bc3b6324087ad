"""The collectives part of benchmarks/planner.py: fit the executor's CPU costs, then check
the autotuner's choice against ring / tree / packing measured in the same run.

Per shape (loopback ranks, or an emulated cluster in network namespaces):
1. calibration: ring, double binary tree and packing with 1 and 4 trees at 512 KiB and
   8 MiB (pieces of 16 KiB, 64 KiB, 256 KiB and 2 MiB; on loopback also the flat tree, and
   16 MiB pieces, every message whole) are timed, and `costmodel.fit` finds the CPU parameters
   (per message, per byte copied, per byte forwarded, per step) that predict them best,
   then a factor per algorithm and regime (whole or in pieces, `CostParams.scales`);
2. sweep: at every size, the autotuner's choice under the fitted model and the model's
   best piece size for ring, tree and packing are timed in interleaved rounds (median);
   the choice must be within 5% of the best of the three and within 20% of its
   prediction. Sizes of the sweep are not those of the calibration. On loopback the
   autotuner measures (`choose(measure=...)`): its `shortlist` (the model's best entry of
   each of the 4 algorithm families) is timed in the same rounds, the choice is the
   fastest by the even rounds, and it is judged by the odd rounds.
"""

from __future__ import annotations

import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

# pieces from the autotuner's smallest (16 KiB) up: without it the per-message cost was
# unidentified (32 KiB pieces hide it behind the links) and the sweep then picked 16 KiB
CALIBRATION = [(alg, size, chunk) for alg in ("ring", "dbtree", "packing:1", "packing:4")
               for size in (512 << 10, 8 << 20)
               for chunk in (16 << 10, 64 << 10, 256 << 10, 2 << 20)]
# loopback: the flat tree too (the autotuner's choice there at 256 KiB - 16 MiB in every
# run of 2026-12-02, and until then never calibrated; on the emulated shapes it was never
# chosen, and its 8 runs took about 4 minutes on two-node), and every algorithm whole at
# 8 MiB: loopback's best runs send every segment whole (2026-12-02, 15:24 UTC: the
# fastest of 226 runs at each of 7 sizes was one piece per segment), and at 8 MiB only
# 16 MiB pieces make every algorithm's message whole
LOOPBACK_CALIBRATION = CALIBRATION + \
    [(alg, size, chunk) for alg in ("flat",) for size in (512 << 10, 8 << 20)
     for chunk in (16 << 10, 64 << 10, 256 << 10, 2 << 20)] + \
    [(alg, 8 << 20, 16 << 20) for alg in ("ring", "dbtree", "flat", "packing:1", "packing:4")]
TUNE_TOP = 4  # loopback: the autotuner times the best of each family (ring, dbtree,
# flat, packing): its contenders there are within 10-30% of each other, and one-piece
# runs of the same job moved by up to 30% between runs (2026-12-02), more than the
# model tells apart
BASE = dict(alpha=10e-6, reduce_bw=0.5e9, step_overhead=20e-6, cores=float(os.cpu_count()),
            link_efficiency=0.97)
LOOPBACK_BASE = dict(alpha=150e-6, reduce_bw=8e9, step_overhead=100e-6,
                     cores=float(os.cpu_count()), link_efficiency=1.0, copy_bw=2.5e9)


SHAPES_SWEPT = ("loopback4", "dgx1-mesh", "two-node")  # --collectives-shapes

SMALL = 8 << 20  # jobs below this many bytes get SMALL_ROUNDS x the rounds: they are
SMALL_ROUNDS = 3  # short, and their medians over 3 rounds moved by up to 30% (2026-12-02)


def time_runs(job_file: str, rounds: int, warm: bool = False, halves: bool = False) -> dict:
    """In every rank: run each (key, schedule, chunk, size) job, interleaved rounds (jobs
    under SMALL bytes SMALL_ROUNDS times as many); the slowest rank's time per run;
    median per key. With `warm`, each timed run right after an untimed run of the same
    job, so that every job is timed after the same thing (itself), not after whichever
    job precedes it in the round. With `halves`, per key (median of the even rounds,
    median of the odd ones): two independent timings under the same conditions."""
    from weft.collectives.executor import execute

    torch.set_num_threads(1)
    jobs = pickle.loads(Path(job_file).read_bytes())
    bufs = {size: torch.ones(size // 4) for _, _, _, size in jobs}
    for key, sched, chunk, size in jobs:  # warm-up (and buffers)
        execute(sched, bufs[size], chunk_bytes=chunk, timeout=600)
    times: dict = {key: [] for key, *_ in jobs}
    for i in range(rounds * SMALL_ROUNDS):
        for key, sched, chunk, size in jobs:
            if i >= rounds and size >= SMALL:
                continue
            if warm:
                execute(sched, bufs[size], chunk_bytes=chunk, timeout=600)
            dist.barrier()
            t0 = time.perf_counter()
            execute(sched, bufs[size], chunk_bytes=chunk, timeout=600)
            t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            times[key].append(float(t))
    if halves:
        return {k: (statistics.median(v[0::2]), statistics.median(v[1::2]))
                for k, v in times.items()}
    return {k: statistics.median(v) for k, v in times.items()}


def _run(runner, jobs, rounds: int, halves: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "jobs.pkl")
        Path(path).write_bytes(pickle.dumps(jobs))
        return runner(path, rounds, halves)


def sweep(fabric, runner, sizes, base: dict, rounds: int, calib_rounds: int,
          calibration=CALIBRATION, tune_top: int | None = None) -> dict:
    """Calibrate on `fabric` (runs through `runner(job_file, rounds, halves)`), then
    sweep. With `tune_top`, the choice is the autotuner's measured one: every size's
    `shortlist` is timed with the contenders, `choose` takes the fastest by the even
    rounds, and the choice and the contenders are compared by the odd rounds (timings
    of the same conditions that the choice was not made on)."""
    from weft.collectives.autotune import choose, ranked, schedule_for, shortlist
    from weft.collectives.costmodel import CostParams, family, fit

    base_p = CostParams(**base)
    jobs = [((alg, size, chunk), schedule_for(fabric, "allreduce", alg), chunk, size)
            for alg, size, chunk in calibration]
    measured = _run(runner, jobs, calib_rounds)
    samples = [(s, fabric, size, chunk, measured[key]) for key, s, chunk, size in jobs]
    params, fit_err = fit(samples, base_p, per_regime=True)
    plan = {}
    jobs = []
    for size in sizes:  # every size's contenders in one run of the ranks
        r = ranked(fabric, "allreduce", size, params=params)
        best_of = {}
        for c in r:
            fam = family(c.algorithm)
            if fam in ("ring", "dbtree", "packing") and fam not in best_of:
                best_of[fam] = c
        # each job timed once: the choice is often its family's best too (the same job
        # timed twice differed by up to 30%, and was then compared with itself)
        timed = {(c.algorithm, c.chunk_bytes): c for c in list(best_of.values()) +
                 (shortlist(r, tune_top) if tune_top else [r[0]])}
        plan[size] = (r, best_of)
        jobs += [((key, size), c.schedule, c.chunk_bytes, size) for key, c in timed.items()]
    got = _run(runner, jobs, rounds, halves=bool(tune_top))
    tuned = {}
    if tune_top:
        tuned = {size: choose(fabric, "allreduce", size, params=params, top=tune_top,
                              measure=lambda c, size=size: got[(c.algorithm, c.chunk_bytes),
                                                               size][0])
                 for size in sizes}
        got = {k: v[1] for k, v in got.items()}
    for size in sizes:
        r, best_of = plan[size]
        pick = tuned.get(size, r[0])
        choice = next(c for c in r if (c.algorithm, c.chunk_bytes) ==
                      (pick.algorithm, pick.chunk_bytes))
        plan[size] = (choice, best_of)
        got["choice", size] = got[(choice.algorithm, choice.chunk_bytes), size]
        for fam, c in best_of.items():
            got[fam, size] = got[(c.algorithm, c.chunk_bytes), size]
    rows = []
    for size in sizes:
        choice, best_of = plan[size]
        best = min(got[k, size] for k in best_of)
        how = "measured" if size in tuned else "model"
        rows.append({"size": size, "choice": f"{choice.algorithm}/{choice.chunk_bytes >> 10}KiB "
                                             f"({how})",
                     "predicted": choice.predicted, "measured": got["choice", size],
                     "vs_best": got["choice", size] / best,
                     "default_choice": _default_choice(fabric, size, base_p),
                     **{f"{k}_s": got[k, size] for k in best_of}})
    return {"params": params, "fit_error": fit_err, "rows": rows, "calibration": measured}


def _default_choice(fabric, size, base) -> str:
    from weft.collectives.autotune import ranked

    c = ranked(fabric, "allreduce", size, params=base)[0]
    return f"{c.algorithm}/{c.chunk_bytes >> 10}KiB"


def loopback_runner(n: int):
    """Local gloo ranks, each run warm (`time_runs`): on 4 ranks sharing 2 cores a 256 KiB
    all-reduce (one tree, whole) took a median 1.3 ms right after itself, 2.0 after other
    small jobs, 3.1 after a 64 MiB ring and 3.9 after 0.1 s idle (2026-12-02 15:52 UTC, 21
    rounds), so unwarmed the order of the jobs in a round decided the comparison. The
    emulated shapes showed no such effect (the same probe on the DGX-1 mesh: 6.1-6.9 ms)
    and are timed as they come."""
    from weft.launch import launch

    def run(job_file, rounds, halves=False):
        return launch(time_runs, n, args=(job_file, rounds, True, halves), timeout=600)[0]
    return run


def netns_runner(cluster):
    def run(job_file, rounds, halves=False):
        return cluster.run(f"{Path(__file__).resolve()}:time_runs",
                           {"job_file": job_file, "rounds": rounds, "halves": halves},
                           timeout=3600,
                           op_timeout=600)[0]
    return run


def part_collectives(args, figs):
    from _common import figure
    from _planner_gpt import netns_ok

    from weft.collectives.emulate.shapes import SHAPES, star_slow
    from weft.collectives.fabric import Fabric

    sizes = [256 << 10, 2 << 20] if args.quick else [256 << 10, 1 << 20, 4 << 20, 16 << 20,
                                                     64 << 20]
    wanted = getattr(args, "collectives_shapes", ",".join(SHAPES_SWEPT)).split(",")
    bad = [w for w in wanted if w not in SHAPES_SWEPT]
    if bad:
        raise SystemExit(f"--collectives-shapes: unknown {bad}; choose from "
                         f"{', '.join(SHAPES_SWEPT)}")
    shapes = [("loopback4", None)] if "loopback4" in wanted else []
    ok, why = netns_ok()
    emulated = [(w, 4.0) for w in ("dgx1-mesh", "two-node") if w in wanted]
    if not args.quick and ok:
        shapes += emulated
    elif not args.quick and emulated:
        print(f"  collectives: emulated shapes skipped: {why}")
    calib = LOOPBACK_CALIBRATION if not args.quick else \
        [(a, s, c) for a in ("ring", "packing:1") for s in (512 << 10,) for c in (64 << 10,
                                                                              1 << 20)]
    for name, scale in shapes:
        if scale is None:
            fab = Fabric(star_slow(4, fast=1e12, slow=1e12), [f"h{i}" for i in range(4)])
            out = sweep(fab, loopback_runner(4), sizes, LOOPBACK_BASE,
                        rounds=3 if args.quick else 15, calib_rounds=2 if args.quick else 9,
                        calibration=calib, tune_top=TUNE_TOP)
        else:
            from weft.collectives.emulate.netns import NetnsCluster

            with NetnsCluster(SHAPES[name](), mbit_per_gbs=scale) as c:
                out = sweep(c.fabric(), netns_runner(c), sizes, BASE, rounds=3,
                               calib_rounds=3)
        print(f"  collectives {name}: fitted {out['params']} (calibration error "
              f"{out['fit_error']:.0%})")
        for r in out["rows"]:
            err = r["predicted"] / r["measured"] - 1
            print(f"    {r['size'] >> 10:>6} KiB all-reduce: choice {r['choice']} "
                  f"{r['measured'] * 1e3:.1f} ms ({r['vs_best']:.2f}x of the best of "
                  f"ring {r.get('ring_s', 0) * 1e3:.1f} / tree {r.get('dbtree_s', 0) * 1e3:.1f} "
                  f"/ packing {r.get('packing_s', 0) * 1e3:.1f} ms), predicted "
                  f"{r['predicted'] * 1e3:.1f} ms ({err:+.0%}); unfitted model chose "
                  f"{r['default_choice']}")
            big = not args.quick
            figs.append(figure(f"collectives/{name}/{r['size'] >> 10}KiB/choice_vs_best",
                               r["vs_best"], "x", 1.05 if big else None, "lower"))
            figs.append(figure(f"collectives/{name}/{r['size'] >> 10}KiB/prediction_error",
                               abs(err), "", 0.2 if big else None, "lower"))
