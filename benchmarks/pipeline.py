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
Then the GPT-style transformer of examples/gpt.py split at block boundaries
(`_pipeline_gpt`): weft 1F1B-flush vs Schedule1F1B on the same equal-blocks split
(target >= 1.0x) and the planner's best 2-stage partition vs equal blocks.
The profile is taken on the benchmark's ranks one at a time (the other waits
in a barrier): solo layer times. How much slower the ranks compute when both
compute at once (2 cores, gloo's threads, other tenants) is measured on the
same ranks (`weft.planner.contention`: each rank's slice of a balanced split,
forward+backward at the micro-batch, both ranks at once vs one at a time, min of
2*reps rounds of M passes) and given to the partitioner (`compute_scale`) and to `predict`
(`contention="overlap"`: charged in proportion to the other rank's concurrent
compute). The runtime's own cost per schedule action and per step is calibrated
on the same ranks (`weft.planner.local_costs`: the real runtime on a
trivial model, same schedule and micro-batches) and charged by both too
(one `PlannerSettings`).
A recorded run of each plan compares every stage's measured forward/backward
time per micro-batch with the profile's and with that stage's own contention.
Every throughput is the best of `reps` interleaved repetitions (the machine is shared),
each repetition starting with the next contender in turn; weft vs torch is the median over
repetitions of their ratio within the repetition (the best-vs-best ratio is printed too).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import emit, figure, parser
from _pipeline_probes import (local_topology, model, pingpong, profile_on_ranks, stage_times, timed,
                              torch_1f1b)

M, MB = 8, 32  # micro-batches per step, samples per micro-batch


# -- on the ranks: the contenders -------------------------------------------------------
def weft_contender(plan, kind, x, y, pipes):
    """weft's runtime on `plan` with schedule `kind` (1f1b-flush or pipedream async)."""
    from weft.parallel.pipeline import Pipeline

    pipe = pipes[(plan.method, kind)] = Pipeline.from_plan(
        model(), plan, F.cross_entropy, kind, optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    mb = plan.micro_batch
    if kind == "pipedream":
        return lambda k: pipe.train_async(list(x.split(mb)) * k, list(y.split(mb)) * k)
    return lambda k: [pipe.step(x, y) for _ in range(k)]


def torch_contender(plan, x, y):
    """torch.distributed.pipelining's Schedule1F1B on the same split and micro-batches."""
    s = plan.stage_of_rank(dist.get_rank())[0]
    first, end = plan.stages[s].layers
    return torch_1f1b(model()[first:end], s, plan.num_stages, plan.microbatches, F.cross_entropy,
                      x, y)


def measure_costs(M, mb, steps, reps):
    """The link, the solo profile, the runtime's overheads and the compute contention (with
    its diagnostic variants), all on these ranks."""
    from weft.planner import PlannerSettings, balanced_bounds, calibrate, contention

    bw, lat = pingpong()
    prof = profile_on_ranks(mb)
    topo = local_topology(bw, lat)
    # loopback: the ranks' CPUs copy every message (cpu_copy_bw = the measured bandwidth)
    cal = calibrate([[0], [1]], M, topo, "1f1b", mb, settings=PlannerSettings(cpu_copy_bw=bw),
                    steps=steps * 2, reps=reps)
    share = balanced_bounds(prof, dist.get_world_size())[dist.get_rank()]  # a balanced stage

    def con(layers=share, **kw):
        return contention(model(), torch.randn(mb, 64), layers, rounds=2 * reps, passes=M,
                          statistic="min", **kw)

    # the headline factor, then diagnostics: concurrent passes back to back (no barrier
    # before each), the whole model on every rank, a barrier before every F and B
    cons = {"": con(), "plain": con(handoff=False), "whole": con(None),
            "action": con(handoff="action")}
    return bw, lat, prof, topo, cal, share, cons


def rank_main(M, mb, steps, reps):
    from weft.planner import balanced_bounds, contention, equal_layers, partition

    rank = dist.get_rank()
    bw, lat, prof, topo, cal, share, cons = measure_costs(M, mb, steps, reps)
    settings = cal.settings.replace(compute_scale=cons[""]["compute_scale"])
    opt_plan = partition(prof, topo, workers=2, micro_batch=mb, microbatches=M, stash=False,
                         settings=settings)
    eq_plan = equal_layers(prof, topo, workers=2, micro_batch=mb, microbatches=M)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(M * mb, 64, generator=g), torch.randint(0, 10, (M * mb,), generator=g)
    pipes = {}
    runs = {"weft_1f1b": weft_contender(eq_plan, "1f1b", x, y, pipes),
            "torch_1f1b": torch_contender(eq_plan, x, y),
            "weft_pipedream": weft_contender(eq_plan, "pipedream", x, y, pipes),
            "weft_1f1b_optimal": weft_contender(opt_plan, "1f1b", x, y, pipes)}
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
    plans = {"opt": opt_plan, "eq": eq_plan}
    recorded = {name: stage_times(pipes[(p.method, "1f1b")], x, y, steps)
                for name, p in plans.items()}
    # diagnostic: each plan's own stages' contention (every rank times its stage)
    stage_con = {name: contention(model(), torch.randn(mb, 64),
                                  layers=p.stages[p.stage_of_rank(rank)[0]].layers,
                                  rounds=2 * reps, passes=M, statistic="min")["factors"]
                 for name, p in plans.items()}
    allrec = [None] * dist.get_world_size()
    dist.all_gather_object(allrec, recorded)
    return {"bw": bw, "lat": lat, "opt_step_s": optimizer_step_s(), "times": times,
            "opt": opt_plan.to_dict(), "prof": prof.to_dict(), "eq": eq_plan.to_dict(),
            "cal": cal, "recorded": allrec, "contention": cons[""],
            "stage_contention": stage_con, "contention_plain": cons["plain"],
            "contention_whole": cons["whole"], "contention_action": cons["action"],
            "share": balanced_bounds(prof, dist.get_world_size()),
            "contention_during": float(np.mean(conc / solo))}


def optimizer_step_s() -> float:
    """Median seconds of one SGD step over the whole benchmark model."""
    m = model()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    o = torch.optim.SGD(m.parameters(), lr=0.01)
    step_s = []
    for _ in range(10):
        t0 = time.perf_counter()
        o.step()
        step_s.append(time.perf_counter() - t0)
    return float(np.median(step_s))


# -- in the parent: one function per contender, each returning its figures ---------------
def torch_figures(res) -> list[dict]:
    """weft 1F1B-flush vs torch Schedule1F1B, same split: the median over repetitions of
    torch's time over weft's in the same repetition (paired: both ran within a second of
    each other); the ratio of the best repetitions favours whichever contender varies more
    (torch's 1F1B here), so it is a diagnostic."""
    tw, tt = np.array(res["times"]["weft_1f1b"]), np.array(res["times"]["torch_1f1b"])
    return [figure("weft_1f1b_vs_torch_pipelining_1f1b", np.median(tt / tw), "x", 1.0),
            figure("weft_1f1b_vs_torch_pipelining_1f1b_best_reps", tt.min() / tw.min(), "x")]


def pipedream_figures(rate) -> list[dict]:
    """PipeDream async (weight stashing) vs weft 1F1B-flush on the same split."""
    return [figure("pipedream_async_vs_1f1b_flush", rate["weft_pipedream"] / rate["weft_1f1b"],
                   "x")]


def optimal_figures(rate) -> list[dict]:
    """The optimal partition vs equal layers, both weft 1F1B-flush."""
    return [figure("optimal_vs_equal_layers", rate["weft_1f1b_optimal"] / rate["weft_1f1b"],
                   "x")]


def prediction_figures(res, rate, con) -> list[dict]:
    """Predicted (profile + measured link + calibrated runtime overhead + contention +
    schedule simulation) vs measured throughput of both plans, the headline model and the
    model without one of its terms or with a diagnostic factor; prints the per-stage check
    of a recorded run of each plan."""
    from weft.parallel.pipeline import PipelinePlan
    from weft.planner import ModelProfile, PlannerSettings, predict

    prof = ModelProfile.from_dict(res["prof"])
    topo = local_topology(res["bw"], res["lat"])
    plans = {"optimal": PipelinePlan.from_dict(res["opt"]),
             "equal layers": PipelinePlan.from_dict(res["eq"])}
    cal, scale = res["cal"], res["contention"]["compute_scale"]
    total = sum(l.param_bytes for l in prof.layers) or 1.0

    def pred_of(plan, overhead=True, cpu_copy=True, scale=scale, mode="overlap"):
        # the optimizer step of the stage with the most parameters ends each flush step
        frac = max(sum(l.param_bytes for l in prof.layers[s.first:s.end])
                   for s in plan.stages) / total
        base = cal.settings if overhead else PlannerSettings()
        s = base.replace(step_overhead_s=res["opt_step_s"] * frac + base.step_overhead_s,
                         cpu_copy_bw=res["bw"] if cpu_copy else None, compute_scale=scale)
        return predict(plan, prof, topo, "1f1b", settings=s, contention=mode)["samples_per_s"]

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
             for which, plan in plans.items()}
    measured = {"optimal": rate["weft_1f1b_optimal"], "equal layers": rate["weft_1f1b"]}
    for (v, which), p in preds.items():
        desc = variants[v][0]
        con.print(f"predicted ({which}, 1f1b{', ' + desc if desc else ''}): {p:,.0f} samples/s "
                  f"(measured {measured[which]:,.0f})")
    stage_table(res, prof, plans, con)
    figures = []
    for (v, which), p in preds.items():
        name = (f"predicted_vs_measured_error{'_equal_layers' if which != 'optimal' else ''}"
                f"{'_' + v if v else ''}")
        headline = (v, which) == ("", "optimal")
        figures.append(figure(name, abs(p - measured[which]) / measured[which], "fraction",
                              0.15 if headline else None, "lower"))
    return figures + [figure("predicted_optimal_vs_equal_layers",
                             preds["", "optimal"] / preds["", "equal layers"], "x")]


def stage_table(res, prof, plans, con) -> None:
    """Every stage's recorded F and B per micro-batch next to the profile's, and the time
    per action outside F, B and blocked receives next to the calibrated overhead."""
    from rich.table import Table

    sp, o = prof.scaled(MB), res["cal"].settings.action_overhead_s
    st = Table(title="per micro-batch compute and per-action overhead: recorded run vs model (ms)")
    for col in ("plan", "stage", "layers", "F run", "F profile", "B run", "B profile",
                "(F+B) run/profile", "stage contention", "other/action (run)", "o (calibrated)"):
        st.add_column(col)
    for name, plan in zip(("opt", "eq"), plans.values()):
        for k, s in enumerate(plan.stages):
            rec = res["recorded"][s.ranks[0]][name]
            f = sum(l.forward_s for l in sp.layers[s.first:s.end])
            b = sum(l.backward_s for l in sp.layers[s.first:s.end]) + \
                float(sp.meta.get("stage_overhead_s", 0.0))
            st.add_row(name, str(k), f"{s.first}-{s.end - 1}", f"{rec['F'] * 1e3:.3f}",
                       f"{f * 1e3:.3f}", f"{rec['B'] * 1e3:.3f}", f"{b * 1e3:.3f}",
                       f"{(rec['F'] + rec['B']) / (f + b):.2f}",
                       f"{res['stage_contention'][name][s.ranks[0]]:.2f}",
                       f"{rec['other'] * 1e3:.3f}", f"{o * 1e3:.3f}")
    con.print(st)
    con.print(f"(F+B run/profile: the recorded run's stage compute over the solo profile's; "
              f"stage contention: that stage timed with both ranks computing their own stage "
              f"at once vs alone; the prediction uses compute_scale "
              f"{res['contention']['compute_scale']:.3f})")


def cost_figures(res, con) -> list[dict]:
    """What the model was given: the link, the calibrated runtime overheads, the compute
    contention and its diagnostic variants (printed with their conditions)."""
    s, cal, cn = res["cal"].settings, res["cal"], res["contention"]
    con.print(f"gloo loopback: {res['bw'] / 1e9:.2f} GB/s, latency {res['lat'] * 1e6:.0f} us; "
              f"optimal plan {[st['layers'] for st in res['opt']['stages']]} replicas "
              f"{[st['replicas'] for st in res['opt']['stages']]}; equal "
              f"{[st['layers'] for st in res['eq']['stages']]}")
    con.print(f"runtime overhead (calibrated on a trivial model, 1f1b): "
              f"{s.action_overhead_s * 1e6:.1f} us per action, {s.step_overhead_s * 1e6:.0f} us "
              f"per step, message latency {s.latency_s * 1e6:.0f} us, gradient all-reduce "
              f"{s.allreduce_bw / 1e9:.2f} GB/s; trivial steps measured " +
              ", ".join(f"M={m}: {t * 1e3:.2f} ms (predicted {cal.predicted[m] * 1e3:.2f} ms)"
                        for m, t in cal.measured.items()))
    con.print(f"compute contention (forward+backward of the layers of a balanced stage, "
              f"{res['share']} on each rank, both ranks at once, each pass right after a "
              f"barrier, vs one rank at a time back to back, {cn['statistic']} of "
              f"{cn['rounds']} rounds of {cn['passes']} passes): "
              f"compute_scale {cn['compute_scale']:.3f}; per rank " + ", ".join(
                  f"{f:.3f} ({a * 1e3:.2f} -> {b * 1e3:.2f} ms)"
                  for f, a, b in zip(cn["factors"], cn["solo_s"], cn["concurrent_s"])) +
              f"; diagnostics: without the barrier before each pass "
              f"{res['contention_plain']['compute_scale']:.3f}, whole model on each rank "
              f"{res['contention_whole']['compute_scale']:.3f}, measured between the timed "
              f"reps {res['contention_during']:.3f}")
    return [figure("compute_scale", cn["compute_scale"], "x", better="lower"),
            figure("compute_scale_no_handoff", res["contention_plain"]["compute_scale"], "x",
                   better="lower"),
            figure("compute_scale_whole_model", res["contention_whole"]["compute_scale"], "x",
                   better="lower"),
            figure("compute_scale_per_action", res["contention_action"]["compute_scale"], "x",
                   better="lower"),
            figure("compute_scale_between_timed_reps", res["contention_during"], "x",
                   better="lower"),
            figure("runtime_overhead_per_action_s", s.action_overhead_s, "s", better="lower"),
            figure("runtime_overhead_per_step_s", s.step_overhead_s, "s", better="lower"),
            figure("runtime_message_latency_s", s.latency_s, "s", better="lower"),
            figure("pingpong_latency_s", res["lat"], "s", better="lower"),
            figure("runtime_allreduce_bw", s.allreduce_bw, "B/s")]


def partition_figures() -> list[dict]:
    """The time to partition a 200-layer profile on 16 workers (4 hosts x 4)."""
    from weft.planner import LayerProfile, ModelProfile, partition
    from weft.topology.builders import multi_node

    rng = np.random.default_rng(0)
    rows = rng.uniform(0.1, 1.0, (200, 5)) * [1e-3, 2e-3, 1e6, 1e7, 1e6]
    prof = ModelProfile([LayerProfile(f"l{i}", *r) for i, r in enumerate(rows)], batch_size=32)
    t0 = time.perf_counter()
    partition(prof, multi_node(4, 4), workers=16, microbatches=8)
    return [figure("partition_200_layers_16_workers_s", time.perf_counter() - t0, "s", 1.0,
                   "lower")]


def main(argv=None) -> int:
    from rich.console import Console
    from rich.table import Table

    from weft.launch import launch

    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    steps, reps = (4, 3) if args.quick else (6, 16)
    con = Console(width=150)  # wide tables also when piped to a file
    load0 = os.getloadavg()[0]  # the machine is shared: how busy it was around the run
    res = launch(rank_main, 2, args=(M, MB, steps, reps), timeout=120)[0]
    load1 = os.getloadavg()[0]
    samples = steps * M * MB
    rate = {k: samples / min(t) for k, t in res["times"].items()}
    t = Table(title=f"pipeline, 2 gloo ranks, {M} micro-batches of {MB}")
    for col in ("run", "samples/s (best rep)", "median rep"):
        t.add_column(col)
    for k, v in rate.items():
        t.add_row(k, f"{v:,.0f}", f"{samples / np.median(res['times'][k]):,.0f}")
    con.print(t)
    costs = cost_figures(res, con)  # prints the conditions first
    figures = (torch_figures(res) + pipedream_figures(rate) + optimal_figures(rate) +
               prediction_figures(res, rate, con) + costs +
               [figure("weft_1f1b_samples_per_s", rate["weft_1f1b"], "samples/s")] +
               partition_figures() +
               [figure("load_average_1min_before", load0, "", better="lower"),
                figure("load_average_1min_after", load1, "", better="lower")])
    import _pipeline_gpt

    gsteps, greps = (2, 3) if args.quick else (4, 10)
    gres = launch(_pipeline_gpt.rank_main, 2, args=(gsteps, greps), timeout=120)[0]
    figures += _pipeline_gpt.figures(gres, gsteps, con)
    emit(figures, args.json, f"pipeline, 2 gloo ranks (CPU, one thread each), MLP: {M} "
                             f"micro-batches of {MB}, {reps} repetitions of {steps} steps; GPT: "
                             f"{_pipeline_gpt.M} micro-batches of {_pipeline_gpt.MB} sequences, "
                             f"{greps} repetitions of {gsteps} steps: ratios measured in this run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
