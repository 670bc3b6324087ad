"""The plan parts of benchmarks/planner.py: search time on a large cluster (simulated),
predicted vs measured step time of the GPT plans on local gloo ranks (and the auto plan
against the grid), and the memory model against peak RSS."""

from __future__ import annotations

import time

from _common import figure
from _planner_calibrate import calibrate_local
from _planner_gpt import GPT, GPT_QUICK, SPEC, grid, workload


def part_search(args, figs):
    from weft.planner.plan_cost import PlanModel
    from weft.planner.search import Space, search
    from weft.planner.workload import transformer
    from weft.topology.builders import multi_node

    nodes, layers = (8, 8) if args.quick else (128, 48)
    t0 = time.perf_counter()
    topo = multi_node(nodes, 8, style="switch")
    wl = transformer(n_layer=layers, d_model=2048, n_head=16, seq=2048, flops=300e12)
    model = PlanModel(wl, topo)
    found = search(wl, model, nodes * 8, 1024, 80 * 2**30, Space(interleaved=True), top=5)
    total = time.perf_counter() - t0
    best = found.best
    print(f"search: {layers}-layer transformer (d_model 2048, seq 2048) on {nodes * 8} devices "
          f"of multi_node {nodes}x8 (switch), batch 1024, 80 GiB: {found.candidates} candidates, "
          f"costed {found.evaluated}, best {best.shape.label()} {best.step_s * 1e3:.1f} ms, "
          f"search {found.seconds:.2f} s, with topology and model set-up {total:.2f} s")
    name = f"search/{layers}layers_{nodes * 8}devices"
    figs.append(figure(f"{name}/seconds", found.seconds, "s",
                       None if args.quick else 10.0, "lower"))
    figs.append(figure(f"{name}/seconds_with_setup", total, "s", None, "lower"))


def part_plans(args, figs):
    from scipy.stats import spearmanr

    from weft.collectives.emulate.shapes import star_slow
    from weft.plan.parse import from_dict
    from weft.planner.measure import measure
    from weft.planner.plan_cost import PlanModel
    from weft.planner.search import Space, search
    from weft.planner.shape import Shape

    world = 2 if args.quick else args.world
    cfg = GPT_QUICK if args.quick else GPT
    batch = 16 if args.quick else args.batch
    wl, rules = workload(cfg, batch // world, 2 if args.quick else 7)
    costs = calibrate_local(world, wl, cfg, batch, args.quick)
    topo = star_slow(world, fast=1e12, slow=1e12)
    model = PlanModel(wl, topo, costs, devices=[f"h{i}" for i in range(world)])
    plans = grid(world, rules, cfg["n_layer"])
    if args.quick:
        plans = {k: v for k, v in list(plans.items())[:2]}
    steps = 3 if args.quick else 10
    runnable = __import__("weft.planner.auto_cli", fromlist=["runnable"]).runnable(batch)
    found = search(wl, model, world, batch, None, Space(runnable=runnable), top=3)
    auto = found.best.shape.to_plan(wl, rules, name="auto", shard_modules=("blocks.*",),
                                    checkpoint=("blocks.*",))
    measured = {}
    # the auto plan may be one of the grid's (the same plan under another name): then it is
    # measured once, as that grid plan; timing it twice would compare the plan with itself
    same = _same_plan(auto, plans)
    # interleaved rounds: the host's speed drifts by up to 1.5x over minutes, which one plan
    # after another turns into prediction errors and into the auto plan's gap to the grid
    rows = measure([from_dict(p) for p in plans.values()] + ([] if same else [auto]), SPEC,
                   world, batch, steps=steps, config=cfg, many=True, timeout=600,
                   rounds=2 if args.quick else 5)
    for k, name in enumerate(plans):
        measured[name] = rows[0][k]["step_s"]
    got = measured[same] if same else rows[0][len(plans)]["step_s"]
    pred = {n: model.estimate(Shape.of(from_dict(p), wl, batch, world)).step_s
            for n, p in plans.items()}
    for n in plans:
        err = pred[n] / measured[n] - 1
        print(f"  {n:<14} predicted {pred[n] * 1e3:8.2f} ms  measured {measured[n] * 1e3:8.2f} "
              f"ms  ({err:+.0%})")
        figs.append(figure(f"plans/{n}/prediction_error", abs(err), "", 0.2, "lower"))
    rho = spearmanr([pred[n] for n in plans], [measured[n] for n in plans]).statistic
    figs.append(figure("plans/rank_correlation", rho, "", 0.9, "higher"))
    best = min(measured.values())
    dp = measured[f"dp{world}"]
    print(f"  auto plan {found.best.shape.label()}"
          + (f" (the grid's {same}, measured once)" if same else "")
          + f": predicted {found.best.step_s * 1e3:.2f} ms, "
          f"measured {got * 1e3:.2f} ms; best of the grid {best * 1e3:.2f} ms "
          f"({min(measured, key=measured.get)}), plain DP {dp * 1e3:.2f} ms")
    figs.append(figure("plans/auto_vs_best_grid", got / best, "x", 1.05, "lower"))
    figs.append(figure("plans/auto_speedup_vs_dp", dp / got, "x", None, "higher"))


def _same_plan(auto, plans: dict) -> str | None:
    """The name of the grid plan that is `auto` up to its name, if any."""
    from weft.plan.parse import from_dict, to_dict

    def body(plan) -> dict:
        d = dict(to_dict(plan))
        d.pop("name", None)
        return d

    mine = body(auto)
    return next((n for n, p in plans.items() if body(from_dict(p)) == mine), None)


def part_memory(args, figs):
    from weft.plan.parse import from_dict
    from weft.planner.measure import measure, reset_peak
    from weft.planner.memory import plan_memory
    from weft.planner.shape import Shape

    if not reset_peak():
        print("memory: skipped (needs Linux /proc/self/clear_refs)")
        return
    cfg = {"d_model": 256, "n_head": 8, "n_layer": 4, "block": 64}
    wl, rules = workload(cfg, 8, 1)
    plans = grid(2, rules)
    batch = 16
    rows = measure([from_dict(p) for p in plans.values()], SPEC, 2, batch, steps=2, memory=True,
                   config=cfg, many=True, timeout=600)
    worst = 0.0
    for k, (name, p) in enumerate(plans.items()):
        pred = plan_memory(Shape.of(from_dict(p), wl, batch, 2), wl)[0]
        got = max(r[k]["peak"] for r in rows)
        err = pred / got - 1
        worst = max(worst, abs(err))
        print(f"  memory {name:<12} predicted {pred / 2**20:7.1f} MiB, measured peak RSS "
              f"{got / 2**20:7.1f} MiB ({err:+.0%})")
    figs.append(figure("memory/max_error_vs_peak_rss", worst, "", 0.15, "lower"))
