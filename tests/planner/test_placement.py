"""Placement: solved, never predicted worse than rank order, exposed in the plan."""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.errors import PlanError
from weft.plan.io import loads
from weft.planner.mesh_groups import mesh_groups
from weft.planner.placement import _partition_milp, place, rank_of_device
from weft.planner.plan_cost import PlanModel
from weft.planner.shape import Shape
from weft.planner.workload import transformer
from weft.topology.model import Topology


def hosts_topology(hosts: int, per: int, intra: float, inter: float, order: list[int]):
    """`hosts` hosts of `per` devices (full mesh inside at `intra`), device i of every host
    linked at `inter` to device i of the others; devices listed in `order`."""
    t = Topology("hosts")
    names = [f"h{h}d{d}" for h in range(hosts) for d in range(per)]
    for k in order:
        t.add_device(names[k], host=names[k][:2], memory=64 * 2**30)
    for h in range(hosts):
        for a, b in itertools.combinations(range(per), 2):
            t.add_link(f"h{h}d{a}", f"h{h}d{b}", intra)
    for d in range(per):
        for a, b in itertools.combinations(range(hosts), 2):
            t.add_link(f"h{a}d{d}", f"h{b}d{d}", inter)
    return t, [names[k] for k in order]


def _meshes(n):
    for pp in (1, 2):
        for tp in (1, 2, 4):
            if n % (pp * tp) == 0:
                yield pp, n // (pp * tp), tp


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hosts=st.integers(2, 3), per=st.sampled_from([2, 4]), intra=st.sampled_from([25e9, 100e9]),
       inter=st.sampled_from([1e9, 5e9, 25e9]), seed=st.integers(0, 10**6),
       d_model=st.sampled_from([256, 1024]), mesh=st.integers(0, 5), fsdp=st.booleans())
def test_placement_never_predicts_worse_than_rank_order(hosts, per, intra, inter, seed, d_model,
                                                        mesh, fsdp):
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(hosts * per))
    topo, launch = hosts_topology(hosts, per, intra, inter, order)
    n = hosts * per
    meshes = list(_meshes(n))
    pp, dp, tp = meshes[mesh % len(meshes)]
    wl = transformer(n_layer=4, d_model=d_model, n_head=8, seq=128, vocab=2048, flops=20e12)
    model = PlanModel(wl, topo, devices=launch)
    shape = Shape(pp=pp, dp_replicate=1 if fsdp else dp, dp_shard=dp if fsdp else 1, tp=tp,
                  global_batch=4 * dp * pp, microbatches=2 * pp if pp > 1 else 1,
                  flavour="none" if dp == 1 else ("fsdp" if fsdp else "weft"))
    placed = place(model, shape, budget_s=2.0)
    assert placed.estimate.step_s <= placed.rank_order.step_s * (1 + 1e-12)
    assert sorted(placed.devices) == sorted(set(placed.devices)) and len(placed.devices) == n
    assert placed.rank_order.placement == launch[:n]


def test_interleaved_launch_order_is_fixed():
    """Hosts listed alternately (a launcher mapping ranks round-robin over nodes): rank
    order puts every tp pair across the slow link; placement keeps them inside hosts."""
    topo, launch = hosts_topology(2, 2, 100e9, 1e9, [0, 2, 1, 3])
    wl = transformer(n_layer=4, d_model=1024, n_head=8, seq=512, vocab=2048, flops=20e12)
    model = PlanModel(wl, topo, devices=launch)
    shape = Shape(dp_replicate=2, tp=2, global_batch=8, flavour="weft")
    placed = place(model, shape)
    tp_groups = mesh_groups(placed.estimate.shape, placed.devices)["tp"][0]
    assert all(len({topo.device(d).host for d in g}) == 1 for g in tp_groups)
    ranked_tp = mesh_groups(shape, launch)["tp"][0]
    assert all(len({topo.device(d).host for d in g}) == 2 for g in ranked_tp)
    assert placed.gain > 1.2


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 7), seed=st.integers(0, 10**6), caps=st.sampled_from([(4, 4), (3, 5),
                                                                            (2, 3, 3)]))
def test_host_partition_is_optimal(n, seed, caps):
    if n > sum(caps):
        return
    rng = np.random.default_rng(seed)
    w = {(i, j): float(rng.integers(0, 5)) for i in range(n) for j in range(i + 1, n)}
    got = _partition_milp(w, n, list(caps))

    def cut(a):
        return sum(v for (i, j), v in w.items() if a[i] != a[j])
    best = min(cut(a) for a in itertools.product(range(len(caps)), repeat=n)
               if all(a.count(h) <= c for h, c in enumerate(caps)))
    assert all(got.count(h) <= c for h, c in enumerate(caps))
    assert cut(got) == pytest.approx(best)


def test_plan_placement_field():
    text = ("format: weft.plan/1\nmesh: {dp_replicate: 2, tp: 2}\n"
            "tensor_parallel: [{module: a, style: colwise}]\n"
            "placement: [h0d0, h0d1, h1d0, h1d1]\n")
    plan = loads(text)
    assert plan.placement == ("h0d0", "h0d1", "h1d0", "h1d1")
    assert rank_of_device(plan, "h1d0") == 2
    with pytest.raises(PlanError, match="placement"):
        rank_of_device(plan, "nope")
    with pytest.raises(PlanError, match="placement: 3 devices for a mesh of 4"):
        loads(text.replace(", h1d1]", "]"))
    with pytest.raises(PlanError, match="more than one rank"):
        loads(text.replace("h1d1]", "h1d0]"))
    from weft.plan.io import dumps

    assert loads(dumps(plan)) == plan
    assert "placement" not in dumps(loads(text.replace("placement: [h0d0, h0d1, h1d0, h1d1]\n",
                                                       "")))
