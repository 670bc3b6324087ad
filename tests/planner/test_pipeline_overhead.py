"""The runtime-overhead terms of the cost model: exact arithmetic, the fit, the calibration."""

import pytest

from weft.errors import PlanError
from weft.launch import launch
from weft.parallel.pipeline.stages import from_boundaries
from weft.planner import (CostModel, LayerProfile, ModelProfile, PlannerSettings, calibrate,
                          equal_layers, partition, predict)
from weft.planner.overhead import cpu_overhead, fit_latency, fit_line, trivial_plan
from weft.topology.builders import ring
from weft.topology.model import Topology


def make_profile(rows):
    return ModelProfile([LayerProfile(f"l{i}", f, b, o, p, s)
                         for i, (f, b, o, p, s) in enumerate(rows)], batch_size=1)


def free_link(bw=1e15):
    t = Topology("loop")
    for d in ("a", "b"):
        t.add_device(d, memory=1e14, host="h")
    t.add_link("a", "b", bw, 1e-12)
    return t


def test_stage_time_charges_each_action_per_micro_batch():
    prof = make_profile([(1, 1, 100, 0, 0)] * 3)
    topo = ring(3, bandwidth=1e9)
    plain = CostModel.build(prof, topo, microbatches=2)
    cm = CostModel.build(prof, topo, microbatches=2,
                         settings=PlannerSettings(action_overhead_s=0.25))
    d = lambda i, j, a, r: float(cm.stage_time(i, j, a, r) - plain.stage_time(i, j, a, r))  # noqa
    assert d(0, 3, 0, 1) == pytest.approx(2 * 0.25 * 2)  # one stage: F and B only
    assert d(0, 1, 0, 1) == pytest.approx(2 * 0.25 * 4)  # first: + send F, recv B
    assert d(2, 3, 2, 1) == pytest.approx(2 * 0.25 * 4)  # last: + recv F, send B
    assert d(1, 2, 1, 1) == pytest.approx(2 * 0.25 * 6)  # middle: both neighbours
    assert d(1, 2, 1, 2) == pytest.approx(2 * 0.25 * 6 / 2)  # replicas split micro-batches


def test_overhead_in_the_partitioner():
    # compute 1, 2, 2: [0,2)|[2,3) (3 vs 2) beats [0,1)|[1,3) (1 vs 4)
    # (big parameters make replicating one stage on both ranks cost 4.5)
    prof = make_profile([(0.5, 0.5, 1, 2e12, 0), (1.0, 1.0, 1, 0, 0), (1.0, 1.0, 1, 0, 0)])
    topo = free_link(bw=1e12)
    base = partition(prof, topo, microbatches=1, method="flat")
    assert base.boundaries() == [(0, 2), (2, 3)]  # 3 vs 2
    # an overhead per action does not change the balance of two 4-action stages
    over = partition(prof, topo, microbatches=1, method="flat",
                     settings=PlannerSettings(action_overhead_s=0.5))
    assert over.boundaries() == [(0, 2), (2, 3)]
    assert over.bottleneck_s == pytest.approx(base.bottleneck_s + 4 * 0.5)
    eq = equal_layers(prof, topo, microbatches=1, settings=PlannerSettings(action_overhead_s=0.5))
    assert eq.stages[0].time_s == pytest.approx(3.0 + 4 * 0.5)


def test_allreduce_copies_charged_with_cpu_copy_bw():
    # one stage of 1000 parameter bytes replicated on 2 ranks, no compute
    prof = make_profile([(0, 0, 4, 1000, 0)])
    topo = free_link(bw=1e4)
    plain = CostModel.build(prof, topo, microbatches=2)
    cm = CostModel.build(prof, topo, microbatches=2, settings=PlannerSettings(cpu_copy_bw=100.0))
    ring = 2 * (2 - 1) / 2 * 1000  # bytes each replica sends and receives
    assert float(plain.stage_time(0, 1, 0, 2)) == pytest.approx(ring / 1e4)
    assert float(cm.stage_time(0, 1, 0, 2)) == pytest.approx(ring / 1e4 + 2 * ring / 100.0)
    plan = from_boundaries([(0, 1)], [2], micro_batch=1, microbatches=2)
    assert predict(plan, prof, topo, "1f1b")["step_s"] == pytest.approx(ring / 1e4)
    assert predict(plan, prof, topo, "1f1b",
                   settings=PlannerSettings(cpu_copy_bw=100.0))["step_s"] == \
        pytest.approx(ring / 1e4 + 2 * ring / 100.0)
    # a measured all-reduce bandwidth replaces the link and copy terms
    cm = CostModel.build(prof, topo, microbatches=2,
                         settings=PlannerSettings(cpu_copy_bw=100.0, allreduce_bw=50.0))
    assert float(cm.stage_time(0, 1, 0, 2)) == pytest.approx(ring / 50.0)
    assert predict(plan, prof, topo, "1f1b",
                   settings=PlannerSettings(cpu_copy_bw=100.0, allreduce_bw=50.0))["step_s"] \
        == pytest.approx(ring / 50.0)


def test_predict_adds_the_overhead_to_every_action():
    # one stage, one rank: 2 actions (F, B) per micro-batch, back to back
    prof = make_profile([(1.0, 2.0, 4, 0, 0)])
    topo = free_link()
    plan = from_boundaries([(0, 1)], micro_batch=1, microbatches=3)
    base = predict(plan, prof, topo, "1f1b")["step_s"]
    assert base == pytest.approx(9.0)
    assert predict(plan, prof, topo, "1f1b",
                   settings=PlannerSettings(action_overhead_s=0.1))["step_s"] == \
        pytest.approx(9.0 + 6 * 0.1)
    # two stages, no compute, free link, one micro-batch: the critical path is all 8 actions
    prof2 = make_profile([(0, 0, 4, 0, 0), (0, 0, 4, 0, 0)])
    plan2 = from_boundaries([(0, 1), (1, 2)], micro_batch=1, microbatches=1)
    got = predict(plan2, prof2, topo, "1f1b",
                  settings=PlannerSettings(action_overhead_s=0.5, step_overhead_s=0.25))
    assert got["step_s"] == pytest.approx(8 * 0.5 + 0.25, rel=1e-9)


def test_predict_latency_override():
    # two stages, no compute, one micro-batch: two messages on the critical path
    prof = make_profile([(0, 0, 4, 0, 0), (0, 0, 4, 0, 0)])
    plan = from_boundaries([(0, 1), (1, 2)], micro_batch=1, microbatches=1)
    topo = ring(2, bandwidth=1e15, latency=1e-3)
    assert predict(plan, prof, topo, "1f1b")["step_s"] == pytest.approx(2e-3, rel=1e-6)
    got = predict(plan, prof, topo, "1f1b",
                  settings=PlannerSettings(latency_s=0.25, action_overhead_s=0.5))["step_s"]
    assert got == pytest.approx(2 * 0.25 + 8 * 0.5, rel=1e-9)


@pytest.mark.parametrize("lat", [0.0, 3e-5, 2e-4, 1e-2])
def test_fit_latency_recovers_a_known_latency(lat):
    prof = make_profile([(1e-3, 2e-3, 400, 0, 0), (5e-4, 1e-3, 400, 0, 0)])
    topo = ring(2, bandwidth=1e8, latency=1e-4)
    plan = trivial_plan([[0], [1]], 1, 8)

    def step_of(x):
        return predict(plan, prof, topo, "1f1b",
                       settings=PlannerSettings(cpu_copy_bw=1e9, action_overhead_s=2e-5,
                                                latency_s=x))["step_s"]

    assert fit_latency(step_of, step_of(lat)) == pytest.approx(lat, abs=1e-10)
    assert fit_latency(step_of, step_of(0.0) / 2) == 0.0  # faster than any latency: 0


def test_fit_line_exact_and_clamped():
    o, c = fit_line([(8, 8 * 3e-5 + 1e-4), (16, 16 * 3e-5 + 1e-4), (8, 8 * 3e-5 + 1e-4)])
    assert o == pytest.approx(3e-5, rel=1e-9) and c == pytest.approx(1e-4, rel=1e-9)
    o, c = fit_line([(1, 1.0), (2, 3.0)])  # intercept -1 < 0: refit through the origin
    assert c == 0.0 and o == pytest.approx((1 + 6) / (1 + 4))
    assert fit_line([(1, 2.0), (2, 1.0)]) == (0.0, 1.5)  # negative slope
    with pytest.raises(PlanError, match="two or more"):
        fit_line([(3, 1.0), (3, 2.0)])


def test_cpu_overhead_subtracts_waits_and_compute():
    events = [(0, "F", 0, 0, 0.0, 0.5), (0, "wait", 0, 0, 1.0, 1.75),
              (0, "wait", 1, 0, 2.0, 2.25), (0, "B", 0, 0, 3.0, 3.5)]
    assert cpu_overhead(4.0, events, compute_s=0.5) == pytest.approx(4.0 - 1.0 - 0.5)


def _calibrate_rank():
    topo = ring(2, bandwidth=1e9, latency=5e-5)
    return calibrate([[0], [1]], 2, topo, micro_batch=4, steps=3, reps=2,
                     allreduce_bytes=2**16,
                     settings=PlannerSettings(cpu_copy_bw=1e8, compute_scale=1.5))


@pytest.mark.slow
def test_calibrate_on_gloo_ranks():
    a, b = launch(_calibrate_rank, 2, timeout=60)
    assert a == b  # rank 0's fit, broadcast
    s = a.settings
    assert s.action_overhead_s >= 0 and s.step_overhead_s >= 0 and s.latency_s >= 0
    assert 0 < s.allreduce_bw < float("inf")
    assert s.cpu_copy_bw == 1e8 and s.compute_scale == 1.5  # carried, not measured
    assert set(a.measured) == {2, 4} and all(v > 0 for v in a.measured.values())
    assert set(a.predicted) == {2, 4}
    # the fitted latency reproduces the measured step with 2 micro-batches (unless clamped)
    if s.latency_s > 0:
        assert a.predicted[2] == pytest.approx(a.measured[2], rel=1e-6)


def test_calibrate_rejects_pipedream():
    with pytest.raises(PlanError, match="flush schedules"):
        calibrate([[0], [1]], 2, ring(2), schedule="pipedream")
