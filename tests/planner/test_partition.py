import itertools
import json
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.errors import PlanError
from weft.parallel.pipeline.stages import PipelinePlan
from weft.planner import (CostModel, LayerProfile, ModelProfile, PlannerSettings, equal_layers,
                          partition)
from weft.topology.builders import multi_node, ring
from weft.topology.model import Topology


def make_profile(rows):
    return ModelProfile([LayerProfile(f"l{i}", f, b, o, p, s)
                         for i, (f, b, o, p, s) in enumerate(rows)], batch_size=1)


def compositions(L, W):
    """Every (bounds, replicas) using all W ranks."""
    for S in range(1, min(L, W) + 1):
        for cuts in itertools.combinations(range(1, L), S - 1):
            edges = (0, *cuts, L)
            bounds = list(zip(edges[:-1], edges[1:]))
            for rc in itertools.combinations(range(1, W), S - 1):
                redges = (0, *rc, W)
                yield bounds, [b - a for a, b in zip(redges[:-1], redges[1:])]


def brute_force(cm):
    best = np.inf
    for bounds, reps in compositions(cm.L, cm.W):
        t, ok = cm.evaluate(bounds, reps)
        if ok:
            best = min(best, t)
    return best


def two_hosts(per_host, intra, inter, mem):
    t = Topology("h")
    for h in range(2):
        for d in range(per_host):
            t.add_device(f"h{h}d{d}", memory=mem, host=f"h{h}")
        for d in range(per_host - 1):
            t.add_link(f"h{h}d{d}", f"h{h}d{d + 1}", intra)
    t.add_link("h0d0", "h1d0", inter)
    return t


layer = st.tuples(st.floats(0.01, 5), st.floats(0.01, 5), st.floats(1, 1e4),
                  st.floats(0, 1e5), st.floats(0, 1e4))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(layer, min_size=1, max_size=6), per_host=st.integers(1, 2),
       inter=st.floats(1e3, 1e6), mem=st.floats(2e5, 2e6), m=st.integers(1, 4),
       stash=st.booleans(), copy_bw=st.sampled_from([None, 1e4, 1e6]),
       over=st.sampled_from([0.0, 0.3]))
def test_dp_matches_brute_force(rows, per_host, inter, mem, m, stash, copy_bw, over):
    prof = make_profile(rows)
    topo = two_hosts(per_host, 1e6, inter, mem)
    cm = CostModel.build(prof, topo, microbatches=m, stash=stash,
                         settings=PlannerSettings(cpu_copy_bw=copy_bw, action_overhead_s=over))
    expected = brute_force(cm)
    if not np.isfinite(expected):
        with pytest.raises(PlanError, match="does not fit"):
            cm.solve()
        return
    t, bounds, reps = cm.solve()
    assert t == pytest.approx(expected, rel=1e-9)
    # the returned partition really achieves that time and fits
    assert cm.evaluate(bounds, reps) == (pytest.approx(t, rel=1e-12), True)


def test_replicates_compute_heavy_stage_and_cuts_at_small_activations():
    # layer 1 is expensive and has few parameters: replicating it pays off
    prof = make_profile([(1, 1, 10, 10, 1), (8, 8, 1e6, 10, 1), (1, 1, 10, 10, 1)])
    cm = CostModel.build(prof, ring(4, bandwidth=1e9), microbatches=4)
    t, bounds, reps = cm.solve()
    assert t == pytest.approx(brute_force(cm))
    assert max(reps) >= 2


def test_memory_error_names_layer_that_fits_nowhere():
    prof = make_profile([(1, 1, 10, 100, 10), (1, 1, 10, 1e10, 10), (1, 1, 10, 100, 10)])
    with pytest.raises(PlanError, match=r"does not fit: layer 1 \('l1'\) needs"):
        partition(prof, ring(2), workers=2)  # 16 GiB devices; layer 1 alone needs > 30 GB


def test_memory_forces_split():
    # unconstrained, one stage replicated twice is best (no comm, no params to sync);
    # with 600 kB devices both layers' activations do not fit together -> two stages
    rows = [(1, 1, 1e4, 0, 4e5), (1, 1, 1e4, 0, 4e5)]
    topo = ring(2, bandwidth=1e3)
    assert partition(make_profile(rows), topo, microbatches=1).boundaries() == [(0, 2)]
    for d in topo.device_names:
        topo.graph.nodes[d]["device"] = topo.device(d).__class__(d, memory=6e5)
    plan = partition(make_profile(rows), topo, microbatches=1)
    assert plan.boundaries() == [(0, 1), (1, 2)]
    assert all(s.memory_bytes <= 6e5 for s in plan.stages)


def test_plan_json_roundtrip_and_equal_baseline(tmp_path):
    prof = make_profile([(1, 2, 10, 10, 1)] * 6 + [(10, 20, 10, 10, 1)] * 2)
    topo = multi_node(2, 2)
    opt = partition(prof, topo, workers=4, microbatches=8, model="m.py:model")
    eq = equal_layers(prof, topo, workers=4, microbatches=8)
    assert eq.boundaries() == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert opt.bottleneck_s <= eq.bottleneck_s
    assert opt.predicted_samples_per_s >= eq.predicted_samples_per_s
    opt.save(tmp_path / "plan.json")
    back = PipelinePlan.load(tmp_path / "plan.json")
    assert back.to_dict() == opt.to_dict() and back.model == "m.py:model"
    assert back.workers == 4


def test_bad_plan_file_names_field(tmp_path):
    p = tmp_path / "plan.json"
    p.write_text('{"format": "weft.pipeline-plan/1", "num_layers": 4, '
                 '"stages": [{"layers": [0, 2], "ranks": [0]}, {"layers": [3, 4], "ranks": [1]}]}')
    with pytest.raises(PlanError, match=r"plan.json: stage 1: layers \[3, 4\] must start at 2"):
        PipelinePlan.load(p)


@pytest.mark.parametrize("field,value,message", [
    ("micro_batch", -4, "micro_batch: must be an integer >= 1, got -4"),
    ("microbatches", 0, "microbatches: must be an integer >= 1, got 0"),
    ("microbatches", 2.5, "microbatches: must be an integer >= 1, got 2.5"),
    ("workers", "four", "workers: must be an integer >= 1, got 'four'"),
    ("workers", 3, "workers: 3 but the stages use 2 ranks"),
])
def test_bad_plan_counts_are_refused_on_load(tmp_path, field, value, message):
    # issue 14: these used to reach the ranks ("negative dimension", ZeroDivisionError) or pass
    d = {"format": "weft.pipeline-plan/1", "num_layers": 4, "workers": 2,
         "stages": [{"layers": [0, 2], "ranks": [0]}, {"layers": [2, 4], "ranks": [1]}]}
    PipelinePlan.from_dict(d)
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({**d, field: value}))
    with pytest.raises(PlanError, match=re.escape(f"plan.json: {message}")):
        PipelinePlan.load(p)


def test_200_layers_16_workers_is_fast():
    rng = np.random.default_rng(0)
    rows = [tuple(v) for v in rng.uniform(0.1, 1.0, (200, 5)) * [1, 2, 1e5, 1e6, 1e5]]
    topo = multi_node(4, 4)
    t0 = time.perf_counter()
    plan = partition(make_profile(rows), topo, workers=16, microbatches=8)
    elapsed = time.perf_counter() - t0
    assert plan.workers == 16
    print(f"partition 200 layers x 16 workers: {elapsed:.3f} s")


def test_too_many_workers():
    with pytest.raises(PlanError, match="has 2 compute devices; cannot use 3"):
        partition(make_profile([(1, 1, 1, 1, 1)]), ring(2), workers=3)


def test_cpu_copy_charge_on_stage_time_and_prediction():
    from weft.parallel.pipeline.stages import from_boundaries
    from weft.planner import predict

    rows = [(1, 1, 100, 0, 0), (1, 1, 300, 0, 0), (1, 1, 7, 0, 0)]
    prof = make_profile(rows)
    topo = ring(3, bandwidth=1e9)
    plain = CostModel.build(prof, topo, microbatches=2)
    cm = CostModel.build(prof, topo, microbatches=2, settings=PlannerSettings(cpu_copy_bw=100.0))
    # the middle stage receives layer 0's output and sends layer 1's (and the gradients back)
    assert cm.stage_time(1, 2, 1, 1) - plain.stage_time(1, 2, 1, 1) == \
        pytest.approx(2 * 2 * (100 + 300) / 100.0)
    # the model's ends move nothing: a single stage pays no copies
    assert cm.stage_time(0, 3, 0, 1) == pytest.approx(plain.stage_time(0, 3, 0, 1))
    assert cm.stage_time(0, 1, 0, 2) - plain.stage_time(0, 1, 0, 2) == \
        pytest.approx(2 * 2 * 100 / (2 * 100.0))

    # predict: 2 stages, no compute, one micro-batch, an (almost) free link: the step is the
    # four copies on the critical path (send and receive of the activation, then of its gradient)
    prof2 = make_profile([(0, 0, 1e6, 0, 0), (0, 0, 4, 0, 0)])
    t = Topology("loop")
    for d in ("a", "b"):
        t.add_device(d, memory=1e12, host="h")
    t.add_link("a", "b", 1e15, 1e-12)
    plan = from_boundaries([(0, 1), (1, 2)], micro_batch=1, microbatches=1)
    assert predict(plan, prof2, t, "1f1b")["step_s"] == pytest.approx(0.0, abs=1e-6)
    got = predict(plan, prof2, t, "1f1b", settings=PlannerSettings(cpu_copy_bw=1e6))["step_s"]
    assert got == pytest.approx(4.0, rel=1e-6)
