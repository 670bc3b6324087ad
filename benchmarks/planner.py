#!/usr/bin/env python
"""The auto-planner, measured: predictions vs runs, the auto plan, placement, optical
fabrics, search time, collectives, memory. One run; every figure says its conditions.

    python benchmarks/planner.py --quick          # < 1 minute: no namespaces, small sizes
    python benchmarks/planner.py --json out.json  # the full run (root for namespaces)
    python benchmarks/planner.py --parts search,plans --json out.json

Parts (all by default): search (48-layer transformer on 1,024 devices of multi_node
128x8), plans (>= 6 plans of examples/gpt.py on local gloo ranks: predicted vs measured,
the auto plan vs plain DP and the best of the grid), memory (memory model vs peak RSS),
placement (emulated 2-host cluster, slow link between hosts, hosts listed alternately as
a round-robin launcher maps ranks: placed plan vs rank order), fabric (chosen optical
topology vs a ring and a torus of the same ports, emulated at 8 servers and predicted at
128), collectives (the autotuner's choice vs ring / tree / packing, loopback and emulated).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, figure, parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "examples" / "gpt.py")
PARTS = ("search", "plans", "memory", "placement", "fabric", "collectives")
GPT = {"d_model": 128, "n_head": 4, "n_layer": 4, "block": 32}
GPT_QUICK = {"d_model": 64, "n_head": 4, "n_layer": 2, "block": 32}
RULES = None  # filled from the model (Megatron-style rules)


def _gpt(cfg):
    sys.path.insert(0, str(ROOT / "examples"))
    import gpt

    return gpt, gpt.model(**cfg)


def _workload(cfg, micro_batch: int, repeats: int):
    from weft.planner.profile_units import profile_workload
    from weft.planner.tp_rules import megatron_rules

    gpt, model = _gpt(cfg)
    rules = megatron_rules(model)
    wl = profile_workload(model, gpt.example_input, micro_batch, rules, repeats=repeats,
                          statistic="min")
    return wl, rules


# -- search ------------------------------------------------------------------------------
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


# -- plans on local gloo ranks ---------------------------------------------------------------
def grid(world: int, rules, n_layer: int = 4):
    """Hand-written plans of the GPT example for `world` ranks (weft.plan/1 dicts)."""
    cut = f"blocks.{n_layer // 2}"
    tp = [{"module": r.module, **({"style": r.style} if r.style else {}),
           **({"divide": list(r.divide)} if r.divide else {})} for r in rules]
    half = world // 2
    g = {f"dp{world}": {"mesh": {"dp_replicate": world}, "data_parallel": {"replicate": "weft"}},
         f"fsdp{world}": {"mesh": {"dp_shard": world},
                          "data_parallel": {"shard_modules": ["blocks.*"]}},
         f"dp{world}+ckpt": {"mesh": {"dp_replicate": world},
                             "data_parallel": {"replicate": "weft"},
                             "activation_checkpoint": ["blocks.*"]},
         f"dp{half}xtp2": {"mesh": {"dp_replicate": half, "tp": 2}, "tensor_parallel": tp,
                           "data_parallel": {"replicate": "weft"}},
         f"pp2xdp{half}": {"mesh": {"pp": 2, "dp_replicate": half},
                           "pipeline": {"split": [cut], "schedule": "1f1b",
                                        "microbatches": 4}},
         f"tp{world}": {"mesh": {"tp": world}, "tensor_parallel": tp}}
    if world >= 4:
        g[f"hsdp{half}x2"] = {"mesh": {"dp_replicate": half, "dp_shard": 2},
                              "data_parallel": {"replicate": "fsdp",
                                                "shard_modules": ["blocks.*"]}}
        g["pp2xfsdp2"] = {"mesh": {"pp": 2, "dp_shard": half},
                          "pipeline": {"split": [cut], "schedule": "gpipe",
                                       "microbatches": 2}}
    return {k: {"format": "weft.plan/1", "name": k, **v} for k, v in g.items()}


_CALIBRATED: dict = {}


def calibrate_local(world: int, wl, cfg, batch: int, quick: bool):
    """Costs of local gloo ranks, measured without the plans under test: compute
    contention (weft.planner.contention_local), gloo's collectives fitted to the ring
    model on a one-host star, Adam's update rate (once per world size and model)."""
    key = (world, tuple(sorted(cfg.items())), batch)
    if key not in _CALIBRATED:
        _CALIBRATED[key] = _calibrate_local(world, cfg, batch, quick)
    return _CALIBRATED[key]


def _calibrate_local(world: int, cfg, batch: int, quick: bool):
    import torch

    from weft.planner.plan_cost import Costs
    from weft.planner import contention_local

    gpt, model = _gpt(cfg)
    sample = gpt.example_input(max(1, batch // world))
    if world > 1 and not quick:
        c = contention_local(world, sample, model=model, rounds=4)
    else:  # quick: not measured
        c = {"compute_scale": 1.0}
    opt = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    t0 = time.perf_counter()
    n = 5
    for _ in range(n):
        opt.step()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    opt_bw = nbytes * n / (time.perf_counter() - t0)
    params = fit_gloo(world, quick)
    print(f"calibration on {world} local ranks: compute_scale {c['compute_scale']:.2f} "
          f"({'not measured (--quick)' if quick else 'contention_local'}), Adam "
          f"{opt_bw / 1e6:.0f} MB/s of parameters")
    return Costs(compute_scale=c["compute_scale"], collective=params, optimizer_bw=opt_bw)


def gloo_rank(sizes, reps):
    import torch
    import torch.distributed as dist

    out = {}
    for kind in ("allreduce", "all_gather", "reduce_scatter"):
        for size in sizes:
            n = dist.get_world_size()
            x = torch.ones(size // 4)
            outs = torch.empty(size // 4 // n * n)
            ts = []
            for i in range(reps + 1):
                dist.barrier()
                t0 = time.perf_counter()
                if kind == "allreduce":
                    dist.all_reduce(x)
                elif kind == "all_gather":
                    dist.all_gather_into_tensor(outs, x[:size // 4 // n])
                else:
                    dist.reduce_scatter_tensor(x[:size // 4 // n], outs)
                t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                if i:
                    ts.append(float(t))
            out[kind, size] = statistics.median(ts)
    return out


def fit_gloo(world: int, quick: bool):
    """CostParams for gloo's built-in collectives on one host, fitted to the ring model."""
    from weft.collectives.costmodel import CostParams, fit
    from weft.collectives.emulate.shapes import star_slow
    from weft.collectives.fabric import Fabric
    from weft.collectives.ring import ring
    from weft.launch import launch

    if world < 2:
        return CostParams()
    sizes = [64 << 10, 1 << 20] if quick else [64 << 10, 512 << 10, 4 << 20]
    got = launch(gloo_rank, world, args=(sizes, 3 if quick else 7), timeout=300)[0]
    fab = Fabric(star_slow(world, fast=1e12, slow=1e12), [f"h{i}" for i in range(world)])
    samples = [(ring(kind, world), fab, size, size + 1, t) for (kind, size), t in got.items()]
    base = CostParams(alpha=50e-6, reduce_bw=4e9, step_overhead=20e-6,
                      cores=float(os.cpu_count()), copy_bw=2.5e9)
    params, err = fit(samples, base, free=("alpha", "copy_bw", "step_overhead"))
    print(f"gloo on {world} local ranks fitted to the ring model (mean error {err:.0%}): "
          f"{params}")
    return params


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
    wl, rules = _workload(cfg, batch // world, 2 if args.quick else 7)
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
    rows = measure([from_dict(p) for p in plans.values()] + [auto], SPEC, world, batch,
                   steps=steps, config=cfg, many=True, timeout=600)
    for k, name in enumerate(plans):
        measured[name] = rows[0][k]["step_s"]
    got = rows[0][len(plans)]["step_s"]
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
    print(f"  auto plan {found.best.shape.label()}: predicted {found.best.step_s * 1e3:.2f} ms, "
          f"measured {got * 1e3:.2f} ms; best of the grid {best * 1e3:.2f} ms "
          f"({min(measured, key=measured.get)}), plain DP {dp * 1e3:.2f} ms")
    figs.append(figure("plans/auto_vs_best_grid", got / best, "x", 1.05, "lower"))
    figs.append(figure("plans/auto_speedup_vs_dp", dp / got, "x", None, "higher"))


# -- memory -----------------------------------------------------------------------------------
def part_memory(args, figs):
    from weft.plan.parse import from_dict
    from weft.planner.measure import measure, reset_peak
    from weft.planner.memory import plan_memory
    from weft.planner.shape import Shape

    if not reset_peak():
        print("memory: skipped (needs Linux /proc/self/clear_refs)")
        return
    cfg = {"d_model": 256, "n_head": 8, "n_layer": 4, "block": 64}
    wl, rules = _workload(cfg, 8, 1)
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


# -- emulated clusters --------------------------------------------------------------------------
def _netns_ok() -> tuple[bool, str]:
    from weft.collectives.emulate.netns import available

    return available()


def run_placed(cluster, plan_dict, order, cfg, batch, steps) -> float:
    """Measured step time of `plan_dict` with mesh rank r on device order[r]."""
    rows = cluster.run(f"{Path(__file__).resolve().parent / '_planner_ranks.py'}:placed_time_rank",
                       {"plan_dict": plan_dict, "spec": SPEC, "batch": batch, "steps": steps,
                        "config": cfg, "devices": cluster.ranks, "order": list(order),
                        "master": cluster.addr[cluster.ranks[0]], "port": 29544},
                       timeout=3600, op_timeout=900)
    return rows[0]["step_s"]


def two_hosts(inter: float, intra: float = 25e9):
    """Two hosts of two devices, listed alternately (a0, b0, a1, b1)."""
    from weft.topology.model import Topology

    t = Topology("two-hosts-alternating")
    for name in ("a0", "b0", "a1", "b1"):
        t.add_device(name, host=f"host-{name[0]}")
    t.add_link("a0", "a1", intra, kind="intra")
    t.add_link("b0", "b1", intra, kind="intra")
    t.add_link("a0", "b0", inter, kind="inter")
    t.add_link("a1", "b1", inter, kind="inter")
    return t


def emulated_costs(world, cfg, batch, quick):
    from weft.planner.plan_cost import Costs

    base = calibrate_local(world, None, cfg, batch, quick)
    return Costs(compute_scale=base.compute_scale, optimizer_bw=base.optimizer_bw,
                 collective=__import__("weft.collectives.costmodel", fromlist=["CostParams"])
                 .CostParams(alpha=base.collective.alpha, step_overhead=base.collective
                             .step_overhead, cores=base.collective.cores, link_efficiency=0.97))


def part_placement(args, figs):
    from weft.collectives.emulate.netns import NetnsCluster
    from weft.plan.parse import from_dict, to_dict
    from weft.planner.placement import place
    from weft.planner.plan_cost import PlanModel
    from weft.planner.shape import Shape

    cfg = GPT_QUICK if args.quick else GPT
    batch = 16
    wl, rules = _workload(cfg, batch // 2, 2 if args.quick else 5)
    plan = grid(4, rules, cfg["n_layer"])["dp2xtp2"]
    topo = two_hosts(inter=1e9)
    ok, why = _netns_ok()
    scale = args.mbit_per_gbs
    from weft.planner.plan_cost import Costs

    costs = Costs() if args.quick else emulated_costs(4, cfg, batch, False)
    if ok and not args.quick:
        with NetnsCluster(topo, mbit_per_gbs=scale) as c:
            model = PlanModel(wl, c.emulated_topology(), costs, devices=c.ranks)
            shape = Shape.of(from_dict(plan), wl, batch, 4)
            placed = place(model, shape)
            print(f"  placement ({placed.method}): {placed.devices} vs rank order {c.ranks}")
            t_rank = run_placed(c, plan, c.ranks, cfg, batch, 5)
            t_placed = run_placed(c, to_dict(from_dict(plan)), placed.devices, cfg, batch, 5)
    else:
        print(f"  placement: emulation skipped ({why or '--quick'}); predicted only")
        from weft.collectives.emulate.netns import NetnsCluster as NC

        c = NC(topo, mbit_per_gbs=scale)
        model = PlanModel(wl, c.emulated_topology(), costs, devices=c.ranks)
        placed = place(model, Shape.of(from_dict(plan), wl, batch, 4))
        t_rank = t_placed = None
    print(f"  placement dp2xtp2 on {topo.name} (inter-host 1 GB/s vs 25 GB/s, emulated at "
          f"{scale} Mbit/s per GB/s): predicted {placed.gain:.2f}x "
          f"({placed.rank_order.step_s * 1e3:.1f} -> {placed.estimate.step_s * 1e3:.1f} ms)"
          + (f", measured {t_rank / t_placed:.2f}x ({t_rank * 1e3:.1f} -> {t_placed * 1e3:.1f} ms)"
             if t_rank else ""))
    figs.append(figure("placement/predicted_gain", placed.gain, "x", None, "higher"))
    if t_rank:
        figs.append(figure("placement/measured_gain", t_rank / t_placed, "x", 1.3, "higher"))


def part_fabric(args, figs):
    from weft.planner.fabric import optimize_fabric
    from weft.planner.shape import Shape
    from weft.planner.workload import transformer

    big = Shape(pp=4, dp_replicate=4, tp=8, global_batch=256, microbatches=16, flavour="weft")
    n = 128
    if args.quick:
        big = Shape(pp=2, dp_replicate=2, tp=4, global_batch=64, microbatches=8,
                    flavour="weft")
        n = 16
    wl = transformer(n_layer=16, d_model=4096, n_head=32, seq=2048, flops=300e12)
    t0 = time.perf_counter()
    res = optimize_fabric(wl, big, ports=6, bandwidth=12.5e9, rounds=2,
                          place_budget=1.0 if not args.quick else 0.3)
    print(f"  fabric (simulated) {big.label()} on {n} servers, 6 ports of 12.5 GB/s: "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in res.times.items())
          + f"; chosen split {res.optical.split} ({time.perf_counter() - t0:.0f} s)")
    for other in ("ring", "torus"):
        if other in res.times:
            figs.append(figure(f"fabric/{n}servers/predicted_vs_{other}", res.ratio(other), "x",
                               None, "higher"))
    if args.quick:
        return
    ok, why = _netns_ok()
    if not ok:
        print(f"  fabric emulation skipped: {why}")
        return
    emulated_fabric(args, figs)


def emulated_fabric(args, figs):
    from weft.collectives.emulate.netns import NetnsCluster
    from weft.plan.parse import from_dict
    from weft.planner.fabric import optimize_fabric
    from weft.planner.shape import Shape

    cfg = GPT
    batch = 16
    wl, rules = _workload(cfg, batch // 4, 5)
    plan = {"format": "weft.plan/1", "name": "dp2xtp4", "mesh": {"dp_replicate": 2, "tp": 4},
            "data_parallel": {"replicate": "weft"},
            "tensor_parallel": grid(4, rules, cfg["n_layer"])["tp4"]["tensor_parallel"]}
    shape = Shape.of(from_dict(plan), wl, batch, 8)
    costs = emulated_costs(8, cfg, batch, args.quick)
    scale = args.mbit_per_gbs
    bw = 12.5e9
    emu = bw / 1e9 * scale * 1e6 / 8
    res = optimize_fabric(wl, shape, ports=4, bandwidth=emu, costs=costs, rounds=2)
    measured = {}
    for name in ("optical", "ring", "torus"):
        topo = res.topologies[name]
        with NetnsCluster(_rescaled(topo, emu, bw), mbit_per_gbs=scale) as c:
            measured[name] = run_placed(c, plan, res.placements[name], cfg, batch, 5)
    for other in ("ring", "torus"):
        r = measured[other] / measured["optical"]
        print(f"  fabric (emulated, 8 servers, 4 ports) dp2xtp4: {other} / chosen measured "
              f"{r:.2f}x, predicted {res.ratio(other):.2f}x")
        figs.append(figure(f"fabric/8servers/measured_vs_{other}", r, "x", 1.5, "higher"))


def _rescaled(topo, emu, bw):
    """The topology with circuits at `bw` per circuit (it was designed at the emulated rate)."""
    from weft.topology.model import Topology

    t = Topology(topo.name)
    for d in topo.devices:
        t.graph.add_node(d.name, device=d)
    for ln in topo.links:
        t.add_link(ln.src, ln.dst, ln.bandwidth / emu * bw, ln.latency, ln.kind,
                   bidirectional=False)
    return t


def part_collectives(args, figs):
    import _planner_collectives as pc

    from weft.collectives.emulate.shapes import SHAPES, star_slow
    from weft.collectives.fabric import Fabric

    sizes = [256 << 10, 2 << 20] if args.quick else [256 << 10, 1 << 20, 4 << 20, 16 << 20,
                                                     64 << 20]
    shapes = [("loopback4", None)]
    ok, why = _netns_ok()
    if not args.quick and ok:
        shapes += [("dgx1-mesh", 4.0), ("two-node", 4.0)]
    elif not args.quick:
        print(f"  collectives: emulated shapes skipped: {why}")
    calib = pc.CALIBRATION if not args.quick else \
        [(a, s, c) for a in ("ring", "packing:1") for s in (512 << 10,) for c in (64 << 10,
                                                                              1 << 20)]
    for name, scale in shapes:
        if scale is None:
            fab = Fabric(star_slow(4, fast=1e12, slow=1e12), [f"h{i}" for i in range(4)])
            out = pc.sweep(fab, pc.loopback_runner(4), sizes, pc.LOOPBACK_BASE,
                           rounds=3 if args.quick else 9, calib_rounds=2 if args.quick else 5,
                           calibration=calib)
        else:
            from weft.collectives.emulate.netns import NetnsCluster

            with NetnsCluster(SHAPES[name](), mbit_per_gbs=scale) as c:
                out = pc.sweep(c.fabric(), pc.netns_runner(c), sizes, pc.BASE, rounds=3,
                               calib_rounds=2)
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


def main(argv=None) -> int:
    from weft.args import positive_float, positive_int

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {','.join(PARTS)}")
    p.add_argument("--world", type=positive_int, default=4, help="local gloo ranks for the plans part")
    p.add_argument("--batch", type=positive_int, default=32, help="global batch of the GPT plans")
    p.add_argument("--mbit-per-gbs", type=positive_float, default=4.0,
                   help="emulated Mbit/s per GB/s of topology bandwidth")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    bad = [x for x in parts if x not in PARTS]
    if bad:
        p.error(f"--parts: unknown {bad}; choose from {','.join(PARTS)}")
    if args.quick:
        parts = [x for x in parts if x not in ("memory",)]
    figs: list = []
    t0 = time.perf_counter()
    for part in parts:
        t = time.perf_counter()
        print(f"== {part}")
        globals()[f"part_{part}"](args, figs)
        print(f"   ({time.perf_counter() - t:.0f} s)")
    emit(figs, args.json, f"planner ({'quick' if args.quick else 'full'}, "
                          f"{time.perf_counter() - t0:.0f} s, {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
