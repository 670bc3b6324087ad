"""Pipeline benchmark: weft schedules vs torch.distributed.pipelining, partitions, prediction.

    python benchmarks/pipeline.py [--quick] [--json out.json]

One run, 2 local gloo ranks (CPU, one thread each), an MLP with unbalanced
layers. Measures samples/s of:
  * weft 1F1B-flush vs torch.distributed.pipelining Schedule1F1B (same split,
    ranks, micro-batches; target >= 1.0x),
  * weft PipeDream async (weight stashing) vs weft 1F1B-flush,
  * the optimal partition vs equal layers (both 1F1B-flush),
  * predicted (profile + measured link + measured runtime overhead + schedule
    simulation) vs measured throughput of the optimal plan (target within 15%),
and the time to partition a 200-layer profile on 16 workers (target < 1 s).
The profile is taken on the benchmark's ranks one at a time (the other waits
in a barrier): solo layer times. How much slower the ranks compute when both
compute at once (2 cores, gloo's threads, other tenants) is measured on the
same ranks (`weft.planner.contention`: each rank's slice of a balanced split,
forward+backward at the micro-batch, both ranks at once vs one at a time, min of
2*reps rounds of M passes) and given to the partitioner (`compute_scale`) and to `predict`
(`contention="overlap"`: charged in proportion to the other rank's concurrent
compute). The runtime's own cost per schedule action and per step is calibrated
on the same ranks (`weft.planner.overhead.calibrate`: the real runtime on a
trivial model, same schedule and micro-batches) and charged by both too.
A recorded run of each plan compares every stage's measured forward/backward
time per micro-batch with the profile's and with that stage's own contention.
Every throughput is the best of `reps` interleaved repetitions (the machine is shared),
each repetition starting with the next contender in turn; weft vs torch is the median over
repetitions of their ratio within the repetition (the best-vs-best ratio is printed too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _pipeline_probes import local_topology, model, pingpong, profile_on_ranks, stage_times, timed


def rank_main(M, mb, steps, reps):
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    from weft.parallel.pipeline.runtime import Pipeline
    from weft.planner.contention import balanced_bounds, contention
    from weft.planner.overhead import calibrate
    from weft.planner.partition import equal_layers, partition
    rank = dist.get_rank()
    bw, lat = pingpong()
    prof = profile_on_ranks(mb)
    topo = local_topology(bw, lat)
    # loopback: the ranks' CPUs copy every message (cpu_copy_bw = the measured bandwidth)
    cal = calibrate([[0], [1]], M, topo, "1f1b", mb, cpu_copy_bw=bw, steps=steps * 2, reps=reps)
    # compute contention: the whole model's forward+backward on both ranks at once vs alone
    share = balanced_bounds(prof, dist.get_world_size())[rank]  # a balanced stage's layers
    con = contention(model(), torch.randn(mb, 64), share, rounds=2 * reps, passes=M,
                     statistic="min")
    # diagnostics: the same with the concurrent passes back to back (no barrier before
    # each), and with the whole model on every rank
    con_plain = contention(model(), torch.randn(mb, 64), share, rounds=2 * reps, passes=M,
                           statistic="min", handoff=False)
    con_whole = contention(model(), torch.randn(mb, 64), rounds=2 * reps, passes=M,
                           statistic="min")
    con_action = contention(model(), torch.randn(mb, 64), share, rounds=2 * reps, passes=M,
                            statistic="min", handoff="action")
    opt_plan = partition(prof, topo, workers=2, micro_batch=mb, microbatches=M, stash=False,
                         cpu_copy_bw=bw, action_overhead_s=cal["action_s"],
                         allreduce_bw=cal["allreduce_bw"], compute_scale=con["compute_scale"])
    eq_plan = equal_layers(prof, topo, workers=2, micro_batch=mb, microbatches=M)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(M * mb, 64, generator=g), torch.randint(0, 10, (M * mb,), generator=g)
    sgd = lambda p: torch.optim.SGD(p, lr=0.01)  # noqa: E731

    pipes = {}

    def weft_runner(plan, kind):
        pipe = pipes[(plan.method, kind)] = Pipeline.from_plan(model(), plan, F.cross_entropy,
                                                               kind, optimizer=sgd)
        if kind == "pipedream":
            return lambda k: pipe.train_async(list(x.split(mb)) * k, list(y.split(mb)) * k)
        return lambda k: [pipe.step(x, y) for _ in range(k)]

    seq = model()
    (a0, a1), (b0, b1) = eq_plan.boundaries()
    part = seq[a0:a1] if rank == 0 else seq[b0:b1]
    stage = PipelineStage(part, rank, 2, torch.device("cpu"))
    sched = Schedule1F1B(stage, n_microbatches=M, loss_fn=F.cross_entropy)
    topt = torch.optim.SGD(part.parameters(), lr=0.01)

    def torch_run(k):
        for _ in range(k):
            if rank == 0:
                sched.step(x)
            else:
                sched.step(target=y)
            topt.step()
            topt.zero_grad()

    runs = {"weft_1f1b": weft_runner(eq_plan, "1f1b"), "torch_1f1b": torch_run,
            "weft_pipedream": weft_runner(eq_plan, "pipedream"),
            "weft_1f1b_optimal": weft_runner(opt_plan, "1f1b")}
    for fn in runs.values():  # warm-up (shape pass, gloo pairs)
        fn(1)
    times = {k: [] for k in runs}
    during = []  # diagnostic: contention rounds between the timed repetitions
    names = list(runs)
    for i in range(reps):
        # each repetition starts with the next contender (a rotation), so none always runs
        # right after the contention rounds below
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(timed(runs[name], steps))
        during.append(contention(model(), torch.randn(mb, 64), share, rounds=2, passes=M))
    # pooled like the calibration: min over every round, per rank and mode
    solo = np.min([d["solo_s"] for d in during], axis=0)
    conc = np.min([d["concurrent_s"] for d in during], axis=0)
    con_during = float(np.mean(conc / solo))
    recorded = {name: stage_times(pipes[(p.method, "1f1b")], x, y, steps)
                for name, p in (("opt", opt_plan), ("eq", eq_plan))}
    m = model()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    o = torch.optim.SGD(m.parameters(), lr=0.01)
    step_s = [0.0] * 10
    for i in range(10):
        t0 = time.perf_counter()
        o.step()
        step_s[i] = time.perf_counter() - t0
    # diagnostic: each plan's own stages' contention (every rank times its stage)
    stage_con = {name: contention(model(), torch.randn(mb, 64),
                                  layers=p.stages[p.stage_of_rank(rank)[0]].layers,
                                  rounds=2 * reps, passes=M, statistic="min")["factors"]
                 for name, p in (("opt", opt_plan), ("eq", eq_plan))}
    allrec = [None] * dist.get_world_size()
    dist.all_gather_object(allrec, recorded)
    return {"bw": bw, "lat": lat, "opt_step_s": float(np.median(step_s)), "times": times,
            "opt": opt_plan.to_dict(), "prof": prof.to_dict(), "eq": eq_plan.to_dict(),
            "cal": cal, "recorded": allrec, "contention": con, "stage_contention": stage_con, "contention_plain": con_plain,
            "contention_whole": con_whole, "contention_action": con_action,
            "share": balanced_bounds(prof, dist.get_world_size()),
            "contention_during": con_during}


def partition_speed() -> float:
    from weft.planner.partition import partition
    from weft.planner.profile import LayerProfile, ModelProfile
    from weft.topology.builders import multi_node

    rng = np.random.default_rng(0)
    rows = rng.uniform(0.1, 1.0, (200, 5)) * [1e-3, 2e-3, 1e6, 1e7, 1e6]
    prof = ModelProfile([LayerProfile(f"l{i}", *r) for i, r in enumerate(rows)], batch_size=32)
    t0 = time.perf_counter()
    partition(prof, multi_node(4, 4), workers=16, microbatches=8)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    from rich.console import Console
    from rich.table import Table

    from weft.launch import launch
    from weft.parallel.pipeline.stages import PipelinePlan
    from weft.planner.predict import predict
    from weft.planner.profile import ModelProfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (under a minute)")
    ap.add_argument("--json", help="write results as a JSON list here")
    args = ap.parse_args(argv)
    M, mb = 8, 32
    steps, reps = (4, 3) if args.quick else (6, 16)
    con = Console(width=150)  # wide tables also when piped to a file
    load0 = os.getloadavg()[0]  # the machine is shared: how busy it was around the run
    res = launch(rank_main, 2, args=(M, mb, steps, reps), timeout=120)[0]
    load1 = os.getloadavg()[0]
    prof = ModelProfile.from_dict(res["prof"])
    samples = steps * M * mb
    rate = {k: samples / min(t) for k, t in res["times"].items()}
    # weft vs torch: the median over repetitions of torch's time over weft's in the same
    # repetition (paired: both ran within a second of each other); the ratio of the best
    # repetitions favours whichever contender varies more (torch's 1F1B here), so it is a
    # diagnostic
    tw, tt = np.array(res["times"]["weft_1f1b"]), np.array(res["times"]["torch_1f1b"])
    vs_torch, vs_torch_best = float(np.median(tt / tw)), rate["weft_1f1b"] / rate["torch_1f1b"]
    topo = local_topology(res["bw"], res["lat"])
    opt, eq = PipelinePlan.from_dict(res["opt"]), PipelinePlan.from_dict(res["eq"])
    cal = res["cal"]
    total = sum(l.param_bytes for l in prof.layers) or 1.0
    copy = res["bw"]  # loopback gloo: sender's and receiver's CPUs copy each message

    scale = res["contention"]["compute_scale"]

    def pred_of(plan, overhead=True, cpu_copy=True, scale=scale, mode="overlap"):
        # the optimizer step of the stage with the most parameters ends each flush step
        frac = max(sum(l.param_bytes for l in prof.layers[s.first:s.end])
                   for s in plan.stages) / total
        kw = dict(action_overhead_s=cal["action_s"], step_overhead_s=cal["step_s"],
                  latency_s=cal["latency_s"], allreduce_bw=cal["allreduce_bw"]) \
            if overhead else {}
        step = res["opt_step_s"] * frac + kw.pop("step_overhead_s", 0.0)
        return predict(plan, prof, topo, "1f1b", step_overhead_s=step,
                       cpu_copy_bw=copy if cpu_copy else None, compute_scale=scale,
                       contention=mode, **kw)["samples_per_s"]

    # the model, then the model without one of its terms or with a diagnostic factor
    variants = {
        "": ("", {}),
        "no_runtime_overhead": ("no runtime overhead", dict(overhead=False)),
        "no_cpu_copy_charge": ("no CPU copy charge", dict(cpu_copy=False)),
        "no_compute_contention": ("no compute contention", dict(scale=1.0)),
        "contention_on_all_compute": ("contention charged to all compute", dict(mode="all")),
        "contention_between_timed_reps": ("contention measured between the timed reps",
                                          dict(scale=res["contention_during"])),
        "contention_no_handoff": ("contention without a barrier before each pass",
                                  dict(scale=res["contention_plain"]["compute_scale"])),
        "contention_whole_model": ("contention of the whole model on each rank",
                                   dict(scale=res["contention_whole"]["compute_scale"])),
        "contention_per_action": ("contention with a barrier before each F and B",
                                  dict(scale=res["contention_action"]["compute_scale"])),
    }
    preds = {(v, which): pred_of(plan, **kw) for v, (_, kw) in variants.items()
             for which, plan in (("optimal", opt), ("equal layers", eq))}
    measured = {"optimal": rate["weft_1f1b_optimal"], "equal layers": rate["weft_1f1b"]}
    errs = {k: abs(p - measured[k[1]]) / measured[k[1]] for k, p in preds.items()}
    pred, pred_eq = preds["", "optimal"], preds["", "equal layers"]
    part_s = partition_speed()
    con.print(f"gloo loopback: {res['bw'] / 1e9:.2f} GB/s, latency {res['lat'] * 1e6:.0f} us; "
              f"optimal plan {[s['layers'] for s in res['opt']['stages']]} replicas "
              f"{[s['replicas'] for s in res['opt']['stages']]}; equal {eq.boundaries()}")
    ms = cal["measured"]
    con.print(f"runtime overhead (calibrated on a trivial model, 1f1b): "
              f"{cal['action_s'] * 1e6:.1f} us per action, {cal['step_s'] * 1e6:.0f} us per "
              f"step, message latency {cal['latency_s'] * 1e6:.0f} us, gradient all-reduce "
              f"{cal['allreduce_bw'] / 1e9:.2f} GB/s; trivial steps "
              "measured " + ", ".join(f"M={m}: {ms[m] * 1e3:.2f} ms (predicted "
                                      f"{cal['predicted'][m] * 1e3:.2f} ms)" for m in ms))
    cn = res["contention"]
    con.print(f"compute contention (forward+backward of the layers of a balanced stage, "
              f"{res['share']} on each rank, both ranks at once, each pass right after a "
              f"barrier, vs one rank at a time back to back, {cn['statistic']} of "
              f"{cn['rounds']} rounds of {cn['passes']} passes): "
              f"compute_scale {scale:.3f}; per rank " + ", ".join(
                  f"{f:.3f} ({s * 1e3:.2f} -> {c * 1e3:.2f} ms)"
                  for f, s, c in zip(cn["factors"], cn["solo_s"], cn["concurrent_s"])) +
              f"; diagnostics: without the barrier before each pass "
              f"{res['contention_plain']['compute_scale']:.3f}, whole model on each rank "
              f"{res['contention_whole']['compute_scale']:.3f}, measured between the timed "
              f"reps {res['contention_during']:.3f}")
    t = Table(title=f"pipeline, 2 gloo ranks, {M} micro-batches of {mb}")
    for col in ("run", "samples/s (best rep)", "median rep"):
        t.add_column(col)
    for k, v in rate.items():
        t.add_row(k, f"{v:,.0f}", f"{samples / np.median(res['times'][k]):,.0f}")
    for (v, which), p in preds.items():
        desc = variants[v][0]
        t.add_row(f"predicted ({which}, 1f1b{', ' + desc if desc else ''})", f"{p:,.0f}", "")
    con.print(t)
    sp = prof.scaled(mb)
    st = Table(title="per micro-batch compute and per-action overhead: recorded run vs model (ms)")
    for col in ("plan", "stage", "layers", "F run", "F profile", "B run", "B profile",
                "(F+B) run/profile", "stage contention", "other/action (run)", "o (calibrated)"):
        st.add_column(col)
    for name, plan in (("opt", opt), ("eq", eq)):
        for k, s in enumerate(plan.stages):
            rec = res["recorded"][s.ranks[0]][name]
            f = sum(l.forward_s for l in sp.layers[s.first:s.end])
            b = sum(l.backward_s for l in sp.layers[s.first:s.end]) + \
                float(sp.meta.get("stage_overhead_s", 0.0))
            st.add_row(name, str(k), f"{s.first}-{s.end - 1}", f"{rec['F'] * 1e3:.3f}",
                       f"{f * 1e3:.3f}", f"{rec['B'] * 1e3:.3f}", f"{b * 1e3:.3f}",
                       f"{(rec['F'] + rec['B']) / (f + b):.2f}",
                       f"{res['stage_contention'][name][s.ranks[0]]:.2f}",
                       f"{rec['other'] * 1e3:.3f}", f"{cal['action_s'] * 1e3:.3f}")
    con.print(st)
    con.print(f"(F+B run/profile: the recorded run's stage compute over the solo profile's; "
              f"stage contention: that stage timed with both ranks computing their own stage "
              f"at once vs alone; the prediction uses compute_scale {scale:.3f})")
    rows = [
        ("weft_1f1b_vs_torch_pipelining_1f1b", vs_torch, "x", 1.0, "higher"),
        ("weft_1f1b_vs_torch_pipelining_1f1b_best_reps", vs_torch_best, "x", None, "higher"),
        ("pipedream_async_vs_1f1b_flush", rate["weft_pipedream"] / rate["weft_1f1b"], "x", None,
         "higher"),
        ("optimal_vs_equal_layers", rate["weft_1f1b_optimal"] / rate["weft_1f1b"], "x", None,
         "higher"),
        ("predicted_vs_measured_error", errs["", "optimal"], "fraction", 0.15, "lower"),
        *[(f"predicted_vs_measured_error{'_equal_layers' if which != 'optimal' else ''}"
           f"{'_' + v if v else ''}", e, "fraction", None, "lower")
          for (v, which), e in errs.items() if (v, which) != ("", "optimal")],
        ("compute_scale", scale, "x", None, "lower"),
        ("compute_scale_no_handoff", res["contention_plain"]["compute_scale"], "x", None,
         "lower"),
        ("compute_scale_whole_model", res["contention_whole"]["compute_scale"], "x", None,
         "lower"),
        ("compute_scale_per_action", res["contention_action"]["compute_scale"], "x", None,
         "lower"),
        ("compute_scale_between_timed_reps", res["contention_during"], "x", None, "lower"),
        ("runtime_overhead_per_action_s", cal["action_s"], "s", None, "lower"),
        ("runtime_overhead_per_step_s", cal["step_s"], "s", None, "lower"),
        ("runtime_message_latency_s", cal["latency_s"], "s", None, "lower"),
        ("pingpong_latency_s", res["lat"], "s", None, "lower"),
        ("runtime_allreduce_bw", cal["allreduce_bw"], "B/s", None, "higher"),
        ("predicted_optimal_vs_equal_layers", pred / pred_eq, "x", None, "higher"),
        ("weft_1f1b_samples_per_s", rate["weft_1f1b"], "samples/s", None, "higher"),
        ("partition_200_layers_16_workers_s", part_s, "s", 1.0, "lower"),
        ("load_average_1min_before", load0, "", None, "lower"),
        ("load_average_1min_after", load1, "", None, "lower"),
    ]
    r = Table(title="ratios (measured in this run)")
    for col in ("metric", "value", "target"):
        r.add_column(col)
    for name, v, unit, target, better in rows:
        tgt = "" if target is None else f"{'>=' if better == 'higher' else '<='} {target}"
        r.add_row(name, f"{v:.4g} {unit}", tgt)
    con.print(r)
    if args.json:
        from weft.atomic import write_text

        write_text(args.json, json.dumps([{"name": n, "value": v, "unit": u, "target": t,
                                           "better": b} for n, v, u, t, b in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
