"""A plan's traffic and judge for `weft.topology.optical`: choose circuits and placement.

    res = optimize_fabric(workload, shape, ports=4, bandwidth=12.5e9)
    res.optical.topology, res.times   # {"optical": s, "ring": s, "torus": s, "fat tree": s}

Traffic per step from the plan cost model (`weft.planner.placement.traffic`): the tp and
data-parallel groups are rings (each member sends its ring share to its successor), the
pipeline's consecutive stages are point-to-point pairs (activations one way, gradients
back). Every candidate topology, the optical designs and the fixed ring, torus and fat tree
with the same ports per server, is judged the same way: the plan's predicted step time
(`PlanModel.estimate`) with the ranks placed on it by `weft.planner.placement.place`.
The pipeline's split is fixed once (on the fat tree) so every fabric runs the same plan.
A fixed fabric that the choice equals up to names (`optical.circuit_maps`, e.g. the ring
when every port went to rings over all servers) also gets the choice's placement under each
renaming, when that is better than its own search's: the same circuits, at least the same
time (routes between paths of equal length follow the names, so a renaming can differ).
"""

from __future__ import annotations

from dataclasses import dataclass

from weft.planner.mesh_groups import mesh_groups
from weft.planner.placement import place, traffic
from weft.planner.plan_cost import Costs, PlanModel
from weft.planner.shape import Shape
from weft.planner.workload import Workload
from weft.topology import optical
from weft.topology.model import Topology


def plan_traffic(model: PlanModel, shape: Shape, placement: list[str]) -> optical.Traffic:
    vol = traffic(model, shape)
    groups = mesh_groups(shape, placement)
    rings = {}
    for d in ("tp", "dp_replicate", "dp_shard"):
        gs = tuple(tuple(g) for per in groups[d] for g in per)
        if vol.get(d, 0.0) > 0 and gs and len(gs[0]) > 1:
            n = len(gs[0])
            rings[d] = (gs, vol[d] / max(1, n - 1))  # bytes per ring hop per step
    pairs = {}
    if shape.pp > 1:
        for p in groups["pp"][0]:
            for s in range(len(p) - 1):
                pairs[p[s], p[s + 1]] = pairs[p[s + 1], p[s]] = vol["pp"] / 2
    return optical.Traffic(rings, pairs, tuple(placement))


@dataclass
class FabricChoice:
    optical: optical.Optimized
    times: dict[str, float]  # predicted step seconds per fabric (each with its placement)
    topologies: dict[str, Topology]
    placements: dict[str, list[str]]

    def ratio(self, other: str) -> float:
        return self.times[other] / self.times["optical"]


def optimize_fabric(workload: Workload, shape: Shape, ports: int, bandwidth: float,
                    costs: Costs | None = None, servers: list[str] | None = None, rounds: int = 4,
                    place_budget: float = 1.0, latency: float = 1e-6,
                    baselines=("ring", "torus", "fat tree")) -> FabricChoice:
    costs = costs or Costs()
    servers = servers or [f"s{i}" for i in range(shape.world)]
    builders = {"ring": optical.ring, "torus": optical.torus, "fat tree": optical.fat_tree}
    ideal = builders["fat tree"](servers, ports, bandwidth, latency)
    shape = PlanModel(workload, ideal, costs, devices=servers).estimate(shape).shape

    def judge(topo: Topology) -> tuple[float, list[str]]:
        model = PlanModel(workload, topo, costs, devices=servers)
        placed = place(model, shape, budget_s=place_budget)
        return placed.estimate.step_s, placed.devices

    any_model = PlanModel(workload, ideal, costs, devices=servers)
    opt = optical.optimize(servers, ports, bandwidth,
                           lambda where: plan_traffic(any_model, shape, where), judge, rounds,
                           latency=latency)
    times = {"optical": opt.step_s}
    topos = {"optical": opt.topology}
    places = {"optical": opt.placement}
    for name in baselines:
        if name == "torus" and ports < 4:
            continue
        topo = builders[name](servers, ports, bandwidth, latency)
        times[name], places[name] = judge(topo)
        topos[name] = topo
        model = PlanModel(workload, topo, costs, devices=servers)
        for same in optical.circuit_maps(opt.topology, topo):
            # the choice is this fabric: its placement, renamed, counts too
            where = [same[d] for d in opt.placement]
            t = model.estimate(shape, where).step_s
            if t < times[name]:
                times[name], places[name] = t, where
    return FabricChoice(opt, times, topos, places)
