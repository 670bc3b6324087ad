"""The plan cost model's pieces: routes, collectives, pipeline time, shapes."""

import itertools

import pytest

from weft.collectives.costmodel import CostParams
from weft.collectives.fabric import Fabric
from weft.plan.check import check
from weft.plan.describe import groups
from weft.plan.format import Mesh
from weft.planner.comm import Comm
from weft.planner.mesh_groups import mesh_groups
from weft.planner.network import Network
from weft.planner.plan_cost import PlanModel
from weft.planner.shape import Shape
from weft.planner.workload import Collective, Layer, Split, Workload, transformer
from weft.topology.builders import dgx1, fat_tree, multi_node, ring


def _hops_and_width(topo, path):
    g = topo.graph
    return len(path) - 1, min(g.edges[a, b]["bandwidth"] for a, b in itertools.pairwise(path))


@pytest.mark.parametrize("topo", [dgx1(), multi_node(2, 3, style="switch"), multi_node(3, 2),
                                  fat_tree(4), ring(6)], ids=lambda t: t.name)
def test_routes_follow_the_fabric_rule(topo):
    """Same hop count and bottleneck as weft.collectives.fabric.Fabric's routes."""
    devs = [d.name for d in topo.compute_devices]
    fab, net = Fabric(topo, devs), Network(topo)
    for i, a in enumerate(devs):
        for j, b in enumerate(devs):
            if i == j:
                continue
            want = [fab.route(i, j)[0][0]] + [e[1] for e in fab.route(i, j)]
            got = net.path(a, b)
            assert got[0] == a and got[-1] == b
            assert _hops_and_width(topo, got) == _hops_and_width(topo, want), (a, b)


def test_loads_add_on_shared_links():
    topo = multi_node(2, 2, style="switch")
    net = Network(topo)
    one = net.loads([("n0.gpu0", "n1.gpu0", 10.0)])
    both = net.loads([("n0.gpu0", "n1.gpu0", 10.0), ("n0.gpu1", "n1.gpu1", 5.0)])
    nic = net.link_id["n0.nic", "net"]
    assert one[nic] == 10.0 and both[nic] == 15.0
    assert net.time([("n0.gpu0", "n1.gpu0", 10.0)]) == pytest.approx(10.0 / topo.bandwidth(
        "n0.nic", "net"))


@pytest.mark.parametrize("params", [CostParams(), CostParams(alpha=1e-4, cores=2.0, copy_bw=2e9),
                                    CostParams(reduce_bw=1e9, step_overhead=1e-5,
                                               link_efficiency=0.9),
                                    CostParams(alpha=2e-4, cores=2.0, forward_bw=1e9,
                                               copy_bw=3e9, overlap=True)])
@pytest.mark.parametrize("kind", ["allreduce", "reduce_scatter", "all_gather"])
def test_ring_closed_form_is_the_cost_model(params, kind):
    topo = multi_node(2, 4, style="switch")
    comm = Comm(Network(topo), params)
    devs = [d.name for d in topo.compute_devices]
    for group in (devs[:4], devs[::2], [devs[0], devs[5], devs[2]]):
        for nbytes in (4096, 1 << 20, 3 << 22):
            assert comm.ring_time(kind, group, nbytes) == pytest.approx(
                comm.predict_ring(kind, group, nbytes), rel=1e-3)


def test_concurrent_groups_share_links():
    """Four dp groups all crossing one NIC take longer than one alone."""
    topo = multi_node(2, 4, style="switch")
    comm = Comm(Network(topo))
    devs = [d.name for d in topo.compute_devices]
    pairs = [[devs[i], devs[4 + i]] for i in range(4)]
    alone = comm.collective("allreduce", comm.groups(pairs[:1]), 64 << 20)
    together = comm.groups(pairs)
    assert together.congestion == pytest.approx(4.0)
    assert comm.collective("allreduce", together, 64 << 20) > 3 * alone


def test_mesh_groups_match_describe():
    shape = Shape(pp=2, dp_replicate=2, dp_shard=1, tp=2)
    mesh = Mesh(2, 2, 1, 2)
    got = mesh_groups(shape, list(range(8)))
    want = groups(mesh)
    assert got["pp"][0] == want["pp"]
    for d in ("dp_replicate", "tp"):
        assert sorted(g for per in got[d] for g in per) == sorted(want[d])


def _toy(n=6, coll=True):
    layers = [Layer("embed", None, Split(1e-4), Split(1e-4), Split(1e3), Split(10.0), 100.0)]
    for i in range(n):
        layers.append(Layer(f"blocks.{i}", f"blocks.{i}", Split(1e-4, 1e-3), Split(2e-4, 2e-3),
                            Split(1e3, 1e6), Split(1e3, 1e4), 1e3, 1e3,
                            collectives=(Collective("allreduce", "forward", 1e3),
                                         Collective("allreduce", "backward", 1e3))
                            if coll else (), modules=(f"blocks.{i}",)))
    layers.append(Layer("head", "head", Split(1e-4), Split(2e-4), Split(1e4), Split(1e3), 10.0,
                        1e3, modules=("head",)))
    return Workload(layers, "toy", tp_max=4, tp_degrees=(1, 2, 4))


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("m", [2, 4, 8])
def test_pipeline_time_close_to_the_simulated_schedule(schedule, m):
    """The closed form against weft's schedule simulator on the same stage costs."""
    from weft.parallel.pipeline.schedule import build_schedule, simulate_pipeline

    wl = _toy(6, coll=False)
    model = PlanModel(wl, ring(4, bandwidth=1e15))
    shape = Shape(pp=4, global_batch=8 * m, microbatches=m, schedule=schedule)
    est = model.estimate(shape)
    fb = {st["stage"]: (st["forward_s"], st["backward_s"]) for st in est.stages}
    sched = build_schedule(schedule, [[s] for s in range(4)], m, 1)

    def dur(rank, a):
        return fb[a.chunk][0] if a.kind == "F" else fb[a.chunk][1] if a.kind == "B" else 0.0
    sim = simulate_pipeline(sched, dur, lambda rank, a: 0.0)["makespan"]
    pipe = est.step_s - est.terms["data-parallel exposed"]
    assert pipe == pytest.approx(sim, rel=0.1)


def test_costs_grow_with_slower_links_and_memory_with_activations():
    wl = transformer(n_layer=4, d_model=512, n_head=8, seq=256, flops=1e13)
    fast = PlanModel(wl, multi_node(2, 2, inter=100e9))
    slow = PlanModel(wl, multi_node(2, 2, inter=1e9))
    shape = Shape(dp_replicate=4, global_batch=16, flavour="weft")
    assert slow.estimate(shape).step_s > fast.estimate(shape).step_s
    ck = fast.estimate(Shape(dp_replicate=4, global_batch=16, flavour="weft",
                             checkpoint=tuple(range(1, 5))))
    base = fast.estimate(shape)
    assert ck.peak_bytes < base.peak_bytes and ck.terms["compute"] > base.terms["compute"]
    fsdp = fast.estimate(Shape(dp_shard=4, global_batch=16, flavour="fsdp"))
    assert fsdp.memory.terms["parameters"] == pytest.approx(base.memory.terms["parameters"] / 4)


def test_shape_round_trips_through_a_plan():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    import gpt

    from weft.planner.tp_rules import megatron_rules

    model = gpt.model(n_layer=4)
    rules = megatron_rules(model)
    assert {r.module for r in rules} >= {"blocks.*.attn.q", "blocks.*.attn.proj",
                                         "blocks.*.mlp.fc", "blocks.*.mlp.proj"}
    wl = _toy(4)
    for shape in (Shape(pp=2, dp_replicate=2, global_batch=16, microbatches=4,
                        bounds=((0, 3), (3, 6)), flavour="weft"),
                  Shape(dp_shard=2, tp=2, global_batch=8, bounds=((0, 6),), flavour="fsdp",
                        checkpoint=(1, 2, 3, 4))):
        plan = shape.to_plan(wl, rules, shard_modules=("blocks.*",), checkpoint=("blocks.*",))
        check(plan, model, shape.world)
        again = Shape.of(plan, wl, shape.global_batch)
        assert again == shape


def test_replicated_all_reduce_overlaps_the_backward_only_without_a_pipeline():
    """weft.parallelize averages a pipeline stage's gradients once, after the schedule's
    last backward: nothing of it is hidden; without a pipeline the hooks start it during the
    backward, which hides up to `overlap` of it."""
    from weft.planner.plan_cost import Costs

    wl = transformer(n_layer=4, d_model=256, n_head=4, seq=64, flops=1e12)
    topo = multi_node(2, 2, style="switch")
    model = PlanModel(wl, topo, Costs(overlap=1.0))
    flat = model.estimate(Shape(dp_replicate=4, global_batch=32, flavour="weft"))
    piped = model.estimate(Shape(pp=2, dp_replicate=2, global_batch=32, microbatches=4,
                                 flavour="weft"))
    assert flat.terms["data-parallel exposed"] < flat.terms["data-parallel total"]
    assert piped.terms["data-parallel total"] > 0
    assert piped.terms["data-parallel exposed"] == piped.terms["data-parallel total"]
