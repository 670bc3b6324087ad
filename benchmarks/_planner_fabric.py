"""The fabric part of benchmarks/planner.py: the chosen optical topology against a ring and
a torus of the same ports, predicted at 128 servers and (as root) emulated at 8."""

from __future__ import annotations

import time

from _common import figure
from _planner_calibrate import emulated_costs
from _planner_gpt import GPT, grid, netns_ok, workload
from _planner_placement import run_placed


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
    ok, why = netns_ok()
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
    wl, rules = workload(cfg, batch // 4, 5)
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
