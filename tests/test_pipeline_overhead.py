"""The runtime-overhead terms of the cost model: exact arithmetic, the fit, the calibration."""

import pytest

from weft.errors import PlanError
from weft.launch import launch
from weft.planner.overhead import calibrate, fit_overhead, trivial_plan
from weft.planner.partition import CostModel, equal_layers, partition
from weft.planner.plan import from_boundaries
from weft.planner.predict import predict
from weft.planner.profile import LayerProfile, ModelProfile
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
    cm = CostModel.build(prof, topo, microbatches=2, action_overhead_s=0.25)
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
    over = partition(prof, topo, microbatches=1, method="flat", action_overhead_s=0.5)
    assert over.boundaries() == [(0, 2), (2, 3)]
    assert over.bottleneck_s == pytest.approx(base.bottleneck_s + 4 * 0.5)
    eq = equal_layers(prof, topo, microbatches=1, action_overhead_s=0.5)
    assert eq.stages[0].time_s == pytest.approx(3.0 + 4 * 0.5)


def test_predict_adds_the_overhead_to_every_action():
    # one stage, one rank: 2 actions (F, B) per micro-batch, back to back
    prof = make_profile([(1.0, 2.0, 4, 0, 0)])
    topo = free_link()
    plan = from_boundaries([(0, 1)], micro_batch=1, microbatches=3)
    base = predict(plan, prof, topo, "1f1b")["step_s"]
    assert base == pytest.approx(9.0)
    assert predict(plan, prof, topo, "1f1b", action_overhead_s=0.1)["step_s"] == \
        pytest.approx(9.0 + 6 * 0.1)
    # two stages, no compute, free link, one micro-batch: the critical path is all 8 actions
    prof2 = make_profile([(0, 0, 4, 0, 0), (0, 0, 4, 0, 0)])
    plan2 = from_boundaries([(0, 1), (1, 2)], micro_batch=1, microbatches=1)
    got = predict(plan2, prof2, topo, "1f1b", action_overhead_s=0.5, step_overhead_s=0.25)
    assert got["step_s"] == pytest.approx(8 * 0.5 + 0.25, rel=1e-9)


@pytest.mark.parametrize("o,c", [(0.0, 0.0), (3e-5, 0.0), (4e-5, 2e-4), (1e-3, 1e-2)])
def test_fit_recovers_known_overheads(o, c):
    prof = make_profile([(1e-3, 2e-3, 400, 0, 0), (5e-4, 1e-3, 400, 0, 0)])
    topo = ring(2, bandwidth=1e8, latency=1e-4)

    def step_of(M, x):
        plan = trivial_plan([[0], [1]], 1, M)
        return predict(plan, prof, topo, "1f1b", cpu_copy_bw=1e9, action_overhead_s=x)["step_s"]

    t1, t2 = step_of(8, o) + c, step_of(16, o) + c
    fo, fc = fit_overhead(step_of, 8, t1, 16, t2)
    assert fo == pytest.approx(o, abs=1e-10)
    assert fc == pytest.approx(c, abs=1e-9)


def test_fit_clamps_at_zero_and_checks_arguments():
    step_of = lambda M, o: M * (1.0 + 2 * o)  # noqa: E731
    # measured growth below what the model predicts without overhead: o = 0
    assert fit_overhead(step_of, 2, 2.0, 4, 3.0) == (0.0, 0.0)
    o, c = fit_overhead(step_of, 2, 3.0, 4, 6.0)  # 2 (1 + 2o) + c = 3, 4 (1 + 2o) + c = 6
    assert o == pytest.approx(0.25) and c == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(PlanError, match="m2 > m1"):
        fit_overhead(step_of, 4, 1.0, 4, 1.0)


def _calibrate_rank():
    topo = ring(2, bandwidth=1e9, latency=5e-5)
    return calibrate([[0], [1]], 2, topo, micro_batch=4, steps=3, reps=2)


@pytest.mark.slow
def test_calibrate_on_gloo_ranks():
    a, b = launch(_calibrate_rank, 2, timeout=60)
    assert a == b  # rank 0's fit, broadcast
    assert a["action_s"] >= 0 and a["step_s"] >= 0
    assert set(a["measured"]) == {2, 4} and all(v > 0 for v in a["measured"].values())
    assert set(a["predicted_no_overhead"]) == {2, 4}


def test_calibrate_rejects_pipedream():
    with pytest.raises(PlanError, match="flush schedules"):
        calibrate([[0], [1]], 2, ring(2), schedule="pipedream")
