"""The fabric part of benchmarks/planner.py: the chosen optical topology against a ring and
a torus of the same ports, predicted at 128 servers, scanned over the plans of 8 servers
(with the non-blocking fat tree of the same ports as the bound of any design), and (as
root) emulated at 8."""

from __future__ import annotations

import os
import time

from _common import figure
from _planner_calibrate import emulated_costs
from _planner_gpt import GPT, grid, netns_ok, workload

# the 8-rank plans of the scan: (pp, dp_replicate, tp)
SCAN = ((1, 2, 4), (1, 4, 2), (2, 1, 4), (2, 2, 2), (4, 1, 2), (2, 4, 1), (4, 2, 1),
        (1, 1, 8), (8, 1, 1), (1, 8, 1))


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
    scan(figs, ports=4)
    if args.quick:
        return
    ok, why = netns_ok()
    if not ok:
        print(f"  fabric emulation skipped: {why}")
        return
    emulated_fabric(args, figs)


def scan(figs, ports: int):
    """Every 8-rank plan of an analytic 8-block transformer, predicted only: chosen vs ring
    and torus, and the fat tree vs the ring (no circuit design of the same ports beats a
    non-blocking switch, so fat tree / ring bounds what any design can gain on the ring)."""
    from weft.planner.fabric import optimize_fabric
    from weft.planner.shape import Shape
    from weft.planner.workload import transformer
    from weft.topology.optical import same_circuits

    wl = transformer(n_layer=8, d_model=2048, n_head=16, seq=1024, flops=300e12)
    rows = []
    t0 = time.perf_counter()
    for pp, dp, tp in SCAN:
        sh = Shape(pp=pp, dp_replicate=dp, tp=tp, global_batch=32,
                   microbatches=4 if pp > 1 else 1, flavour="weft")
        r = optimize_fabric(wl, sh, ports=ports, bandwidth=12.5e9, rounds=2, place_budget=0.3)
        rows.append((sh.label(), r.ratio("ring"), r.ratio("torus"),
                     r.times["ring"] / r.times["fat tree"],
                     same_circuits(r.optical.topology, r.topologies["ring"])))
    print(f"  fabric scan (simulated; 8 servers, {ports} ports of 12.5 GB/s, transformer "
          f"8 blocks d_model 2048 seq 1024, batch 32; {time.perf_counter() - t0:.0f} s): "
          "ring/chosen, torus/chosen, ring/fat tree (*: the choice is the ring itself, placed "
          "by a search from another start)")
    for label, ring, torus, fat, is_ring in rows:
        print(f"    {label:22s} {ring:5.2f}x{'*' if is_ring else ' '} {torus:5.2f}x {fat:5.2f}x")
    figs.append(figure(f"fabric/8servers/{ports}ports/predicted_best_vs_ring",
                       max(x[1] for x in rows), "x", None, "higher"))
    figs.append(figure(f"fabric/8servers/{ports}ports/predicted_best_vs_torus",
                       max(x[2] for x in rows), "x", None, "higher"))
    figs.append(figure(f"fabric/8servers/{ports}ports/fat_tree_bound_vs_ring",
                       max(x[3] for x in rows), "x", None, "higher"))


def emulated_fabric(args, figs):
    from _planner_placement import run_placed

    from weft.collectives.emulate.netns import NetnsCluster
    from weft.plan.parse import from_dict
    from weft.planner.fabric import optimize_fabric
    from weft.planner.plan_cost import PlanModel
    from weft.planner.shape import Shape
    from weft.topology.optical import same_circuits

    cfg = GPT
    batch = 16
    wl, rules = workload(cfg, batch // 4, 5)
    plan = {"format": "weft.plan/1", "name": "dp2xtp4", "mesh": {"dp_replicate": 2, "tp": 4},
            "data_parallel": {"replicate": "weft"},
            "tensor_parallel": grid(4, rules, cfg["n_layer"])["tp4"]["tensor_parallel"]}
    shape = Shape.of(from_dict(plan), wl, batch, 8)
    costs = emulated_costs(8, cfg, batch, args.quick)
    scale = args.fabric_mbit_per_gbs
    bw = 12.5e9
    emu = bw / 1e9 * scale * 1e6 / 8
    res = optimize_fabric(wl, shape, ports=4, bandwidth=emu, costs=costs, rounds=2)
    is_ring = same_circuits(res.topologies["optical"], res.topologies["ring"])
    cond = (f"8 servers, 4 ports of {emu * 8 / 1e6:g} Mbit/s ({scale:g} Mbit/s per GB/s of "
            f"12.5 GB/s), GPT d_model {cfg['d_model']} {cfg['n_layer']} blocks seq "
            f"{cfg['block']}, batch {batch}, plan dp2xtp4, 5 steps; load "
            f"{os.getloadavg()[0]:.1f}")
    print(f"  fabric (emulated) {cond}: chosen split {res.optical.split}"
          f"{' (the ring itself)' if is_ring else ''}")
    measured = {}
    for name in ("optical", "ring", "torus"):
        with NetnsCluster(_rescaled(res.topologies[name], emu, bw), mbit_per_gbs=scale) as c:
            measured[name] = run_placed(c, plan, res.placements[name], cfg, batch, 5)
        print(f"    {name}: measured {measured[name] * 1e3:.0f} ms, predicted "
              f"{res.times[name] * 1e3:.0f} ms (load {os.getloadavg()[0]:.1f})", flush=True)
    # link-bound? the chosen fabric again at half the rate, the same circuits and placement:
    # its time should grow
    half = PlanModel(wl, _rescaled(res.topologies["optical"], emu, emu / 2), costs,
                     devices=[f"s{i}" for i in range(8)]).estimate(
        shape, res.placements["optical"]).step_s
    with NetnsCluster(_rescaled(res.topologies["optical"], emu, bw),
                      mbit_per_gbs=scale / 2) as c:
        slow = run_placed(c, plan, res.placements["optical"], cfg, batch, 5)
    print(f"    chosen at {scale / 2:g} Mbit/s per GB/s: measured {slow * 1e3:.0f} ms "
          f"({slow / measured['optical']:.2f}x), predicted {half * 1e3:.0f} ms "
          f"({half / res.times['optical']:.2f}x)")
    figs.append(figure("fabric/8servers/measured_half_rate_slowdown",
                       slow / measured["optical"], "x", None, "higher"))
    for other in ("ring", "torus"):
        r = measured[other] / measured["optical"]
        print(f"  fabric (emulated) dp2xtp4: {other} / chosen measured {r:.2f}x, predicted "
              f"{res.ratio(other):.2f}x")
        figs.append(figure(f"fabric/8servers/measured_vs_{other}", r, "x", 1.5, "higher"))
        figs.append(figure(f"fabric/8servers/predicted_vs_{other}", res.ratio(other), "x",
                           None, "higher"))


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
