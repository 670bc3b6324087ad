"""The pipeline schedule's own cost per action: charged by the plan cost model as the
schedule runs its actions, and measured (not assumed) by `measure_runtime_costs`."""

import math

import pytest

from weft.collectives.costmodel import CostParams
from weft.planner.plan_cost import Costs, PlanModel
from weft.planner.runtime_costs import RuntimeCosts
from weft.planner.shape import Shape
from weft.planner.workload import Layer, Split, Workload
from weft.topology.builders import ring


def _layers(n=8):
    return Workload([Layer(f"blocks.{i}", f"blocks.{i}", Split(1e-4, 1e-3 * (1 + i % 3)),
                           Split(2e-4, 2e-3), Split(1e3, 1e5), Split(1e3), 1e3,
                           modules=(f"blocks.{i}",)) for i in range(n)], "toy")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("pp,m", [(2, 2), (2, 4), (4, 4), (4, 8)])
def test_action_cost_is_charged_on_every_action_of_the_schedule(schedule, pp, m):
    """With a cost a per forward / backward action, the predicted pipeline equals weft's
    schedule simulator with every compute action a longer; the step grows by a for each
    action on the critical path (2 (pp + M - 1)), the term counts the busiest rank's 2M."""
    from weft.parallel.pipeline.schedule import build_schedule, simulate_pipeline

    a = 3e-3
    wl = _layers()
    shape = Shape(pp=pp, global_batch=4 * m, microbatches=m, schedule=schedule)
    free = PlanModel(wl, ring(pp, bandwidth=1e15)).estimate(shape)
    paid = PlanModel(wl, ring(pp, bandwidth=1e15), Costs(pipeline_action_s=a)).estimate(shape)
    fb = {st["stage"]: (st["forward_s"], st["backward_s"]) for st in paid.stages}
    sched = build_schedule(schedule, [[s] for s in range(pp)], m, 1)

    def dur(rank, act):
        return fb[act.chunk][0] + a if act.kind == "F" else fb[act.chunk][1] + a \
            if act.kind == "B" else 0.0
    sim = simulate_pipeline(sched, dur, lambda rank, act: 0.0)["makespan"]
    assert paid.step_s == pytest.approx(sim, rel=0.1)
    assert paid.step_s - free.step_s == pytest.approx(2 * a * (pp + m - 1))
    assert paid.terms["pipeline actions"] == pytest.approx(2 * m * a)
    assert free.terms["pipeline actions"] == 0.0


def test_no_action_cost_without_a_pipeline():
    wl = _layers()
    shape = Shape(dp_replicate=4, global_batch=16)
    free = PlanModel(wl, ring(4, bandwidth=1e15)).estimate(shape)
    paid = PlanModel(wl, ring(4, bandwidth=1e15), Costs(pipeline_action_s=1e-3)).estimate(shape)
    assert paid.step_s == free.step_s and paid.terms["pipeline actions"] == 0.0


@pytest.mark.parametrize("per_mb", [4e-3, 1e-4])
def test_apply_takes_the_sends_the_model_charges_off_the_measured_micro_batch(per_mb):
    """Half the measured micro-batch (two actions per stage) less one send of the same bytes
    as `Comm.p2p_time` charges it on the CPUs (2 alpha + a copy in and out), never below 0."""
    params = CostParams(alpha=2e-4, copy_bw=1e9)
    rc = RuntimeCosts(0.5, 0.0, 0.0, 0.0, 1e9, 0.0, 4, pipeline_microbatch_s=per_mb,
                      pipeline_bytes=1e5)
    got = rc.apply(Costs(collective=params)).pipeline_action_s
    assert got == pytest.approx(max(per_mb / 2 - (2 * 2e-4 + 2 * 1e5 / 1e9), 0.0))
    assert (got > 0) == (per_mb == 4e-3)


@pytest.mark.slow
def test_runtime_costs_measure_the_pipeline_per_micro_batch():
    """The calibration times the same pipelined plan with more micro-batches: it takes
    longer, and the figure is that difference per micro-batch (measured, so positive)."""
    from weft.planner.runtime_costs import measure_runtime_costs

    rc = measure_runtime_costs(2, repeats=3, units=2, tensors=4, pipe_extra=10)
    s = rc.seconds
    assert s["pipe_hi"] > s["pipe_lo"] > 0
    assert rc.pipeline_microbatch_s == pytest.approx((s["pipe_hi"] - s["pipe_lo"]) / 10)
    assert rc.pipeline_bytes == 4 * 16384
    costs = rc.apply(Costs())
    assert math.isfinite(costs.pipeline_action_s) and costs.pipeline_action_s >= 0
    with pytest.raises(Exception, match="pipe_extra"):
        measure_runtime_costs(2, pipe_extra=0)
