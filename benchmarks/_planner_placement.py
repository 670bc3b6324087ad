"""The placement part of benchmarks/planner.py: a placed plan against rank order on an
emulated 2-host cluster with a slow link between the hosts (network namespaces), and the
runner of placed plans on emulated clusters that the fabric part shares."""

from __future__ import annotations

from pathlib import Path

from _common import figure
from _planner_calibrate import emulated_costs
from _planner_gpt import GPT, GPT_QUICK, SPEC, grid, netns_ok, workload


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


def part_placement(args, figs):
    from weft.collectives.emulate.netns import NetnsCluster
    from weft.plan.parse import from_dict, to_dict
    from weft.planner.placement import place
    from weft.planner.plan_cost import PlanModel
    from weft.planner.shape import Shape

    cfg = GPT_QUICK if args.quick else GPT
    batch = 16
    wl, rules = workload(cfg, batch // 2, 2 if args.quick else 5)
    plan = grid(4, rules, cfg["n_layer"])["dp2xtp2"]
    topo = two_hosts(inter=1e9)
    ok, why = netns_ok()
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
