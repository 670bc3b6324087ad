"""`weft topology optimize`: circuits and placement for a plan on a reconfigurable fabric.

    weft topology optimize --plan plan.yaml --model examples/gpt.py --ports 4 --out topo.yaml

Registered into `weft topology` by the planner (the topology layer cannot import it).
"""

from __future__ import annotations

from weft.errors import PlanError


def _optimize(args) -> int:
    from dataclasses import replace

    from rich.console import Console
    from rich.table import Table

    from weft.plan.io import load, save
    from weft.planner.auto_cli import costs_of, workload_of
    from weft.planner.fabric import optimize_fabric
    from weft.planner.shape import Shape
    from weft.topology.io import save as save_topology
    from weft.topology.optical import circuits
    from weft.units import fmt_rate

    plan = load(args.plan)
    bw = args.port_bandwidth
    world = args.servers or (plan.mesh.size if plan.mesh.resolved else None)
    if world is None:
        raise PlanError("the plan's mesh has a -1 degree: give --servers N")
    wl, _, _ = workload_of(args)
    shape = Shape.of(plan, wl, args.batch, world)
    res = optimize_fabric(wl, shape, args.ports, bw, costs_of(args), rounds=args.rounds,
                          place_budget=args.place_budget)
    con = Console()
    t = Table(title=f"{shape.label()} on {world} servers, {args.ports} ports of "
                    f"{fmt_rate(bw)} each")
    for col in ("fabric", "predicted step", "vs chosen", "ports used (max)"):
        t.add_column(col)
    for name, step in res.times.items():
        used = max(circuits(res.topologies[name], bw).values()) if name != "fat tree" else \
            args.ports
        t.add_row(name, f"{step * 1e3:.3f} ms", f"{step / res.times['optical']:.2f}x", str(used))
    con.print(t)
    rounds = [(r, round(s * 1e3, 3)) for r, s, _ in res.optical.history]
    con.print(f"chosen: ports per server {res.optical.split} (rings per dimension; 'all': rings "
              f"over every server), rounds {rounds}")
    path = save_topology(res.optical.topology, args.out)
    con.print(f"topology written to {path}")
    if args.plan_out:
        placed = replace(plan, placement=tuple(res.optical.placement))
        con.print(f"plan with its placement written to {save(placed, args.plan_out)}")
    return 0


def register(tsub) -> None:
    from weft.args import existing_file, nonneg_float, output_file, positive_int, size
    from weft.planner.auto_cli import _common

    q = tsub.add_parser("optimize", help="choose circuits (optical ports) and placement for a "
                        "plan; compare with ring / torus / fat tree of the same ports")
    q.add_argument("--plan", type=existing_file, required=True, help="plan file (weft.plan/1)")
    _common(q)
    q.add_argument("--ports", type=positive_int, required=True, help="optical ports per server")
    q.add_argument("--port-bandwidth", type=size, default="12.5GB/s", help="bytes/s of one circuit")
    q.add_argument("--servers", type=positive_int, help="servers (default: the plan's world size)")
    q.add_argument("--rounds", type=positive_int, default=4,
                   help="topology / placement alternations")
    q.add_argument("--place-budget", type=nonneg_float, default=1.0, help="seconds per placement")
    q.add_argument("--out", type=output_file, required=True,
                   help="write the chosen topology (YAML) here")
    q.add_argument("--plan-out", type=output_file,
                   help="also write the plan with the chosen placement here")
    q.set_defaults(func=_optimize)
