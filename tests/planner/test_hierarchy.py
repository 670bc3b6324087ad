"""PipeDream's hierarchical (level-by-level) partitioner against brute force."""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.errors import PlanError
from weft.parallel.pipeline.schedule import build_schedule, simulate_pipeline
from weft.parallel.pipeline.stages import PipelinePlan
from weft.planner import (Hierarchy, LayerProfile, ModelProfile, PlannerSettings, is_hierarchical,
                          partition)
from weft.topology.builders import multi_node, ring
from weft.topology.model import Topology


def make_profile(rows):
    return ModelProfile([LayerProfile(f"l{i}", f, b, o, p, s)
                         for i, (f, b, o, p, s) in enumerate(rows)], batch_size=1)


def hosts(H, n, intra, inter, mem):
    t = Topology("hosts")
    for h in range(H):
        for d in range(n):
            t.add_device(f"h{h}d{d}", memory=mem, host=f"h{h}")
        for a, b in itertools.combinations(range(n), 2):
            t.add_link(f"h{h}d{a}", f"h{h}d{b}", intra)
    for h in range(H - 1):
        for d in range(n):
            t.add_link(f"h{h}d{d}", f"h{h + 1}d{d}", inter)
    return t


def splits(L, parts):
    for cuts in itertools.combinations(range(1, L), parts - 1):
        edges = (0, *cuts, L)
        yield list(zip(edges[:-1], edges[1:]))


def counts(total, parts):
    for cuts in itertools.combinations(range(1, total), parts - 1):
        edges = (0, *cuts, total)
        yield [b - a for a, b in zip(edges[:-1], edges[1:])]


def inner_best(hier, i, j):
    """min over every flat plan of layers [i, j) on one host's n workers."""
    best = np.inf
    for S in range(1, min(j - i, hier.n) + 1):
        for bounds in splits(j - i, S):
            for reps in counts(hier.n, S):
                t, ok = hier.node.evaluate([(a + i, b + i) for a, b in bounds], reps)
                if ok:
                    best = min(best, t)
    return best


def brute_force(hier, max_top=None):
    """(best time over the hierarchical plan space, best with a single top-level stage)."""
    L, H = hier.L, hier.H
    inner = {(i, j): inner_best(hier, i, j) for i in range(L) for j in range(i + 1, L + 1)}
    best = np.inf
    for S in range(1, min(L, H) + 1):
        for bounds in splits(L, S):
            for hs in counts(H, S):
                t = 0.0
                for k, ((i, j), h) in enumerate(zip(bounds, hs)):
                    t = max(t, float(hier.top_time(inner[(i, j)], i, j, h)))
                    if k < S - 1:
                        t = max(t, float(hier.boundary(j)))
                best = min(best, t)
    return best, float(hier.top_time(inner[(0, L)], 0, L, H))


def cross_host_sends(plan, n):
    sched = build_schedule("1f1b", [s.ranks for s in plan.stages], plan.microbatches)
    simulate_pipeline(sched)
    return sum(1 for r, acts in sched.items() for a in acts
               if a.kind == "SEND_F" and a.peer // n != r // n)


layer = st.tuples(st.floats(0.01, 5), st.floats(0.01, 5), st.floats(1, 1e4),
                  st.sampled_from([0.0, 10.0, 1e3, 1e5]), st.floats(0, 1e4))


@settings(max_examples=int(__import__("os").environ.get("HX", 30)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(layer, min_size=1, max_size=5), shape=st.sampled_from([(2, 1), (2, 2), (3, 1)]),
       inter=st.floats(1e2, 1e5), mem=st.floats(1e5, 2e6), m=st.integers(1, 4),
       stash=st.booleans(), copy_bw=st.sampled_from([None, 1e5]))
def test_hierarchical_dp_matches_brute_force(rows, shape, inter, mem, m, stash, copy_bw):
    H, n = shape
    topo = hosts(H, n, 1e6, inter, mem)
    hier = Hierarchy(make_profile(rows), topo, microbatches=m, stash=stash,
                     settings=PlannerSettings(cpu_copy_bw=copy_bw))
    # level 0 (every layer range at once) equals the flat DP of each prefix
    a0 = hier.level0()
    for j in range(1, hier.L + 1):
        A, _ = hier.node.table(j)
        np.testing.assert_allclose(a0[:j, j], A[:j, n], rtol=1e-12)
    best, single = brute_force(hier)
    if not np.isfinite(best):
        with pytest.raises(PlanError, match="does not fit"):
            hier.solve()
        return
    t, top, inner = hier.solve()
    assert t == pytest.approx(best, rel=1e-6)
    assert hier.evaluate(top, inner) == (pytest.approx(t, rel=1e-12), True)
    plan = hier.to_plan(top, inner, t)
    assert plan.workers == H * n and plan.num_layers == hier.L
    if single <= best * (1 + 1e-12):  # an optimal plan keeps every boundary inside a host
        assert len(top) == 1
        assert cross_host_sends(plan, n) == 0


def test_two_nodes_keep_boundary_traffic_inside_when_as_good():
    # 2 equal layers, no parameters: pipelining inside each node and replicating that
    # pipeline on both nodes is as good as a cut across nodes; the slow link gets no traffic
    prof = make_profile([(1, 1, 1e3, 0, 1), (1, 1, 1e3, 0, 1)])
    topo = hosts(2, 2, 1e9, 1e6, 1e9)
    hier = Hierarchy(prof, topo, microbatches=4)
    best, single = brute_force(hier)
    assert single == pytest.approx(best)
    plan = partition(prof, topo, microbatches=4)
    assert plan.method == "hierarchical" and plan.extra["top_stages"] == [[0, 2, 2]]
    assert cross_host_sends(plan, 2) == 0
    # layers alternate between a node's two workers; each stage is replicated across nodes,
    # its replicas interleaved node by node (micro-batch mb stays on node mb % 2)
    assert [s.ranks for s in plan.stages] in ([[0, 2], [1, 3]], [[0, 2, 1, 3]])


def test_big_activations_are_not_cut_across_the_slow_link():
    # layer 0's output is huge: cutting after it across nodes costs 2 * 1e6 / 1e5 = 20 per
    # micro-batch; inside a node 2 * 1e6 / 1e9 (cheap). The plan replicates across nodes.
    prof = make_profile([(5, 5, 1e6, 0, 1), (5, 5, 1, 0, 1), (5, 5, 1, 0, 1)])
    topo = hosts(2, 2, 1e9, 1e5, 1e9)
    plan = partition(prof, topo, microbatches=4)
    assert len(plan.extra["top_stages"]) == 1
    assert cross_host_sends(plan, 2) == 0
    flat = partition(prof, topo, microbatches=4, method="flat")
    assert flat.method == "optimal"


def test_method_selection_and_plan_roundtrip(tmp_path):
    prof = make_profile([(1, 2, 10, 10, 1)] * 6 + [(10, 20, 10, 10, 1)] * 2)
    assert is_hierarchical(multi_node(2, 2)) and not is_hierarchical(ring(4))
    assert not is_hierarchical(multi_node(2, 2), workers=2)  # both on one host
    plan = partition(prof, multi_node(2, 2), microbatches=8)
    assert plan.method == "hierarchical"
    assert sorted(r for s in plan.stages for r in s.ranks) == [0, 1, 2, 3]
    plan.save(tmp_path / "p.json")
    assert PipelinePlan.load(tmp_path / "p.json").to_dict() == plan.to_dict()
    assert partition(prof, ring(4), microbatches=8).method == "optimal"
    with pytest.raises(PlanError, match="same number of workers"):
        partition(prof, multi_node(2, 2), workers=3, method="hierarchical")
    with pytest.raises(PlanError, match="must be auto, flat or hierarchical"):
        partition(prof, ring(4), method="greedy")


def test_plan_ranks_must_be_a_permutation():
    d = {"format": "weft.pipeline-plan/1", "num_layers": 2,
         "stages": [{"layers": [0, 1], "ranks": [0, 2]}, {"layers": [1, 2], "ranks": [2]}]}
    with pytest.raises(PlanError, match=r"stage 1: ranks \[2\] must be non-empty and used by no"):
        PipelinePlan.from_dict(d)
    d["stages"][1]["ranks"] = [3]
    with pytest.raises(PlanError, match=r"must be 0..2"):
        PipelinePlan.from_dict(d)
