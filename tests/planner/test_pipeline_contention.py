"""Compute contention: the factor's exact arithmetic in the cost model and `predict`, the
DP under a factor against brute force, and the measurement on 2 gloo ranks."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.errors import PlanError
from weft.launch import launch
from weft.parallel.pipeline.stages import from_boundaries
from weft.planner import CostModel, PlannerSettings, contention, equal_layers, partition, predict
from weft.planner.contention import measure, stage_pass
from weft.topology.model import Topology

from .test_partition import brute_force, layer, make_profile, two_hosts

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "mlp_digits.py")


def free_link(n=2):
    t = Topology("loop")
    for d in range(n):
        t.add_device(f"d{d}", memory=1e14, host="h")
    for d in range(n - 1):
        t.add_link(f"d{d}", f"d{d + 1}", 1e300, 0.0)
    return t


@pytest.mark.parametrize("k", [0.5, 1.0, 1.7, 3.0])
def test_predict_scales_compute_exactly(k):
    # compute only (free link, no overheads): every action's duration scales by k
    prof = make_profile([(1.0, 2.0, 4, 0, 0), (0.5, 1.5, 4, 0, 0), (2.0, 0.25, 4, 0, 0)])
    prof.meta["stage_overhead_s"] = 0.125
    for bounds in ([(0, 3)], [(0, 1), (1, 3)], [(0, 2), (2, 3)]):
        plan = from_boundaries(bounds, micro_batch=1, microbatches=3)
        topo = free_link(len(bounds))
        for sched in ("1f1b", "gpipe"):
            base = predict(plan, prof, topo, sched)
            got = predict(plan, prof, topo, sched, settings=PlannerSettings(compute_scale=k))
            assert got["step_s"] == pytest.approx(k * base["step_s"], rel=1e-12)
            assert got["bubble"] == pytest.approx(base["bubble"], rel=1e-9)
    # one stage on one rank: 3 micro-batches of k * (f + b + call) back to back
    one = from_boundaries([(0, 3)], micro_batch=1, microbatches=3)
    assert predict(one, prof, free_link(1), "1f1b",
                   settings=PlannerSettings(compute_scale=k))["step_s"] == \
        pytest.approx(3 * k * (3.5 + 3.75 + 0.125), rel=1e-12)
    # overheads that are not compute are not scaled
    o = predict(one, prof, free_link(1), "1f1b",
                settings=PlannerSettings(compute_scale=k, action_overhead_s=0.25,
                                         step_overhead_s=1.0))["step_s"]
    assert o == pytest.approx(3 * k * 7.375 + 6 * 0.25 + 1.0, rel=1e-12)


def test_stage_time_scales_compute_only():
    prof = make_profile([(1, 1, 100, 1e4, 0)] * 3)
    prof.meta["stage_overhead_s"] = 0.5
    topo = two_hosts(1, 1e6, 1e5, 1e12)
    plain = CostModel.build(prof, topo, microbatches=2,
                            settings=PlannerSettings(cpu_copy_bw=1e4, action_overhead_s=0.25))
    cm = CostModel.build(prof, topo, microbatches=2,
                         settings=PlannerSettings(cpu_copy_bw=1e4, action_overhead_s=0.25,
                                                  compute_scale=2.5))
    for i, j, a, r in ((0, 1, 0, 1), (1, 3, 1, 1), (0, 3, 0, 2), (0, 2, 0, 2)):
        compute = 2 * ((j - i) * 2 + 0.5) / r
        assert float(cm.stage_time(i, j, a, r) - plain.stage_time(i, j, a, r)) == \
            pytest.approx(1.5 * compute, rel=1e-12)
    assert float(cm.boundary_time(1, 1)) == float(plain.boundary_time(1, 1))
    eq0 = equal_layers(prof, topo, microbatches=2,
                       settings=PlannerSettings(compute_scale=2.5)).stages[0].time_s
    assert eq0 == pytest.approx(2 * 2.5 * (2 * 2 + 0.5), rel=1e-12)  # layers 0-1, one rank


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_compute_scale(bad):
    # the partitioner and predict take settings only as a PlannerSettings, which checks them
    with pytest.raises(PlanError, match="compute_scale must be a finite number > 0"):
        PlannerSettings(compute_scale=bad)
    with pytest.raises(PlanError, match="compute_scale"):
        PlannerSettings().replace(compute_scale=bad)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(layer, min_size=1, max_size=6), per_host=st.integers(1, 2),
       inter=st.floats(1e3, 1e6), m=st.integers(1, 4), k=st.floats(0.2, 5.0),
       copy_bw=st.sampled_from([None, 1e4]), over=st.sampled_from([0.0, 0.3]))
def test_dp_under_a_factor_matches_brute_force(rows, per_host, inter, m, k, copy_bw, over):
    prof = make_profile(rows)
    topo = two_hosts(per_host, 1e6, inter, 1e12)
    cm = CostModel.build(prof, topo, microbatches=m,
                         settings=PlannerSettings(cpu_copy_bw=copy_bw, action_overhead_s=over,
                                                  compute_scale=k))
    t, bounds, reps = cm.solve()
    assert t == pytest.approx(brute_force(cm), rel=1e-9)
    assert cm.evaluate(bounds, reps) == (pytest.approx(t, rel=1e-12), True)
    plan = partition(prof, topo, microbatches=m, method="flat",
                     settings=PlannerSettings(cpu_copy_bw=copy_bw, action_overhead_s=over,
                                              compute_scale=k))
    assert plan.bottleneck_s == pytest.approx(t, rel=1e-9)


def test_factor_changes_the_optimum():
    # layers of compute 6 and 1 on 2 ranks: pipelining's bottleneck is 6k; replicating
    # both layers costs 7k / 2 + a fixed all-reduce of 2e3 bytes at 400 B/s (5 s), so it
    # pays off only when compute is slow (k > 2)
    prof = make_profile([(3, 3, 10, 1e3, 0), (0.5, 0.5, 10, 1e3, 0)])
    topo = free_link()
    kw = dict(microbatches=1, method="flat")
    s = PlannerSettings(allreduce_bw=400.0)
    assert partition(prof, topo, settings=s, **kw).boundaries() == [(0, 1), (1, 2)]  # 6 vs 8.5
    rep = partition(prof, topo, settings=s.replace(compute_scale=4.0), **kw)  # 24 vs 19
    assert rep.boundaries() == [(0, 2)] and rep.stages[0].replicas == 2
    assert rep.bottleneck_s == pytest.approx(4.0 * 7 / 2 + 5.0, rel=1e-12)


def test_stage_pass_runs_the_stage_and_checks_the_range():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    run = stage_pass(m, torch.randn(5, 4), layers=(2, 3))
    run()
    assert m[2].weight.grad is not None and m[0].weight.grad is None  # only the stage
    with pytest.raises(PlanError, match=r"layers \[2, 5\) is not a non-empty range"):
        stage_pass(m, torch.randn(5, 4), layers=(2, 5))


def test_split_stage_pass_is_the_same_forward_and_backward():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    stage_pass(m, x, layers=(0, 3))()
    want = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    fwd, bwd = stage_pass(m, x, layers=(0, 3), split=True)
    fwd()
    assert all(p.grad is None for p in m.parameters())  # forward alone: no gradient yet
    bwd()
    for p, w in zip(m.parameters(), want):
        assert torch.equal(p.grad, w)
    with pytest.raises(PlanError, match="handoff must be True, False or 'action'"):
        contention(m, x, handoff="pass")


def _measure_rank():
    torch.set_num_threads(1)
    spans = []

    def work():
        t0 = time.monotonic()
        torch.randn(32, 32) @ torch.randn(32, 32)
        spans.append((t0, time.monotonic()))

    res = measure(work, rounds=3, passes=2)
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, spans)
    stage = contention(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)),
                       torch.randn(4, 8), layers=(dist.get_rank(), 3), rounds=2, passes=1)
    calls = []
    pair = measure((lambda: calls.append("F"), lambda: calls.append("B")), rounds=2, passes=3)
    return res, every, stage, (pair, calls)


@pytest.mark.slow
def test_measure_on_two_gloo_ranks():
    (a, spans, sa, (pair, calls)), (b, _, sb, _) = launch(_measure_rank, 2, timeout=60)
    assert a == b and sa == sb  # gathered from both ranks, identical on both
    # a pair of work functions (forward, backward) is called in turn: warm-up, then per
    # round `passes` solo and `passes` concurrent passes
    assert calls == ["F", "B"] * (1 + 2 * 3 * 2) and pair["compute_scale"] > 0
    assert a["ranks"] == [0, 1] and len(a["factors"]) == 2 and len(a["solo_s"]) == 2
    for v in a["solo_s"] + a["concurrent_s"] + a["factors"]:
        assert math.isfinite(v) and v > 0
    assert a["factors"] == pytest.approx([c / s for s, c in zip(a["solo_s"], a["concurrent_s"])])
    assert a["compute_scale"] == pytest.approx(np.mean(a["factors"]))
    assert sa["compute_scale"] > 0 and math.isfinite(sa["compute_scale"])
    # every rank ran: a warm-up, then per round `passes` solo and `passes` concurrent passes
    assert [len(s) for s in spans] == [1 + 3 * 2 * 2] * 2
    # solo passes are alone (the others wait in a barrier): at least rounds * passes of
    # each rank's passes overlap no pass of the other rank
    for me, other in ((0, 1), (1, 0)):
        alone = [s for s in spans[me][1:]
                 if all(e <= s[0] or s[1] <= b0 for b0, e in spans[other])]
        assert len(alone) >= 3 * 2


def _slowest_rank():
    torch.set_num_threads(1)
    me = dist.get_rank()

    def work():  # rank 1's pass is much longer than rank 0's
        time.sleep(0.002 if me == 0 else 0.02)

    return measure(work, rounds=2, passes=2, statistic="slowest"), \
        measure(work, rounds=2, passes=2, statistic="median")


@pytest.mark.slow
def test_slowest_statistic_takes_the_slowest_rank_of_each_concurrent_pass():
    """'slowest': every rank's concurrent figure is the slowest rank's pass (about rank
    1's 20 ms, also on rank 0, whose own passes take 2 ms), solo its own minimum."""
    (slow, med), _ = launch(_slowest_rank, 2, timeout=60)
    assert slow["statistic"] == "slowest"
    assert slow["concurrent_s"][0] == slow["concurrent_s"][1] >= 0.02
    assert med["concurrent_s"][0] < 0.01 <= med["concurrent_s"][1]
    assert slow["solo_s"][0] < 0.01 <= slow["solo_s"][1]
    assert slow["factors"][0] > 2 * med["factors"][0]


def test_measure_rejects_bad_arguments():
    with pytest.raises(PlanError, match="statistic must be 'min', 'median' or 'slowest'"):
        measure(lambda: None, statistic="mean")
    with pytest.raises(PlanError, match="rounds >= 1"):
        measure(lambda: None, rounds=0)


@pytest.mark.slow
def test_plan_cli_calibrate_measures_contention(tmp_path, capsys):
    from weft.cli import main

    out = tmp_path / "p.json"
    assert main(["plan", "pipeline", "--model", EXAMPLE, "--topology", "multi_node:1x2",
                 "--workers", "2", "--micro-batch", "8", "--microbatches", "2", "--calibrate",
                 "--cache-dir", str(tmp_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "compute contention (2 local gloo ranks" in text and "compute_scale" in text
    k = json.loads(out.read_text())["extra"]["settings"]["compute_scale"]
    assert math.isfinite(k) and k > 0


def test_plan_cli_compute_scale(tmp_path, capsys):
    from weft.cli import main

    base = ["plan", "pipeline", "--model", EXAMPLE, "--topology", "multi_node:1x2",
            "--workers", "2", "--equal", "--micro-batch", "8", "--microbatches", "2",
            "--cache-dir", str(tmp_path)]
    assert main(base + ["--out", str(tmp_path / "a.json")]) == 0
    assert main(base + ["--compute-scale", "2", "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert b["extra"]["settings"]["compute_scale"] == 2.0
    for sa, sb in zip(a["stages"], b["stages"]):  # no copy or overhead terms: compute only
        assert sb["time_s"] == pytest.approx(2 * sa["time_s"], rel=1e-9)
    assert main(base + ["--compute-scale", "0"]) == 2
    assert "plan pipeline: --compute-scale: must be > 0, got 0" in capsys.readouterr().err


def test_overlap_fractions_exact():
    from weft.parallel.pipeline.schedule import Action
    from weft.planner.contention import overlap_fractions

    F0, B0 = Action("F", 0, 0), Action("B", 0, 0)
    S = Action("SEND_F", 0, 0, 1)
    sched = {0: [F0, S, B0], 1: [F0, B0], 2: []}
    times = {0: [(0.0, 2.0), (2.0, 3.0), (3.0, 5.0)],  # F/B time 4; the send is not compute
             1: [(1.0, 2.5), (4.0, 6.0)], 2: []}
    u = overlap_fractions(sched, times)
    # rank 0 overlaps rank 1 for 1.0 + 1.0 of its 4.0, rank 2 not at all: mean (0.5 + 0) / 2
    assert u[0] == pytest.approx(0.25)
    assert u[1] == pytest.approx((2.0 / 3.5 + 0.0) / 2)  # 1.0 (of F) + 1.0 (of B) of 3.5
    assert u[2] == 0.0


def test_predict_overlap_mode():
    prof = make_profile([(1, 2, 4, 0, 0), (1, 2, 4, 0, 0), (0.1, 0.2, 4, 0, 0)])
    topo = free_link()
    # one rank alone: nothing overlaps, so it runs at its profiled speed
    one = from_boundaries([(0, 3)], micro_batch=1, microbatches=4)
    got = predict(one, prof, free_link(1), "1f1b", contention="overlap",
                  settings=PlannerSettings(compute_scale=1.5))
    assert got["step_s"] == pytest.approx(predict(one, prof, free_link(1), "1f1b")["step_s"])
    assert got["compute_scales"] == {0: 1.0}
    for bounds in ([(0, 1), (1, 3)], [(0, 2), (2, 3)]):
        plan = from_boundaries(bounds, micro_batch=1, microbatches=8)
        base = predict(plan, prof, topo, "1f1b")["step_s"]
        full = predict(plan, prof, topo, "1f1b", settings=PlannerSettings(compute_scale=1.5))
        ov = predict(plan, prof, topo, "1f1b", contention="overlap",
                     settings=PlannerSettings(compute_scale=1.5))
        assert full["compute_scales"] == {0: 1.5, 1: 1.5}
        assert base < ov["step_s"] <= full["step_s"] + 1e-12
        assert all(1.0 <= s <= 1.5 for s in ov["compute_scales"].values())
        assert predict(plan, prof, topo, "1f1b", contention="overlap")["step_s"] == base
    # the unbalanced split: the busy rank 0 mostly computes alone (little charged), the
    # small rank 1 always next to rank 0 (about the full factor)
    plan = from_boundaries([(0, 2), (2, 3)], micro_batch=1, microbatches=8)
    sc = predict(plan, prof, topo, "1f1b", contention="overlap",
                 settings=PlannerSettings(compute_scale=1.5))
    assert sc["compute_scales"][0] < 1.1 < 1.45 < sc["compute_scales"][1]
    with pytest.raises(PlanError, match="contention must be 'all' or 'overlap'"):
        predict(plan, prof, topo, contention="some")


def test_settled_scales_are_a_fixed_point():
    from weft.parallel.pipeline.schedule import build_schedule, simulate_pipeline
    from weft.planner.contention import overlap_fractions, settle_scales

    sched = build_schedule("1f1b", [[0], [1], [2]], 6)
    work = {0: (1.0, 2.0), 1: (0.5, 1.0), 2: (2.0, 3.0)}

    def run(scales):
        def duration(r, a):
            return scales[r] * work[r][a.kind == "B"] if a.kind in ("F", "B") else 0.0
        return simulate_pipeline(sched, duration, lambda r, a: 0.1)

    scales, res = settle_scales(sched, 2.0, run, iters=200, tol=1e-12)
    u = overlap_fractions(sched, res["times"])
    for r in sched:
        assert scales[r] == pytest.approx(1.0 + u[r], abs=1e-6)
    assert res == run(scales)  # the simulation returned is the one with those scales


def test_balanced_bounds():
    from weft.planner.contention import balanced_bounds

    prof = make_profile([(1, 1, 1, 0, 0), (1, 1, 1, 0, 0), (2, 2, 1, 0, 0), (0, 0, 1, 0, 0)])
    assert balanced_bounds(prof, 1) == [(0, 4)]
    assert balanced_bounds(prof, 2) == [(0, 2), (2, 4)]  # compute 4 | 4
    assert balanced_bounds(prof, 3) == [(0, 1), (1, 2), (2, 4)]
    assert balanced_bounds(prof, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert balanced_bounds(prof, 6) == [(0, 1), (1, 2), (2, 3), (3, 4), (0, 1), (1, 2)]
    heavy_first = make_profile([(9, 9, 1, 0, 0)] + [(0.1, 0.1, 1, 0, 0)] * 3)
    assert balanced_bounds(heavy_first, 3) == [(0, 1), (1, 2), (2, 4)]  # never empty
    with pytest.raises(PlanError, match="balanced_bounds"):
        balanced_bounds(prof, 0)
