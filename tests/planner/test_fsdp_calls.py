"""The plan cost model charges fully_shard for the collectives the runtime issues.

On gloo ranks `weft.parallelize` trains the GPT example under fully_shard plans (units
from shard_modules, reshard after forward or not or torch's default (units yes, the root
no), HSDP, pipelines under GPipe and 1F1B)
while every all-gather, reduce-scatter and all-reduce call is counted; the model's
`Estimate.calls` for the rank's pipeline coordinate must be the same numbers, and the
optimizer's parameter tensors those the model charges per tensor (`Layer.tensors`).
"""

import collections
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "examples" / "gpt.py")
CFG = {"d_model": 32, "n_head": 2, "n_layer": 3}
BATCH = 8
KINDS = {"all_gather_single": "all_gather", "reduce_scatter_single": "reduce_scatter",
         "all_reduce": "allreduce"}


def _plan(name, mesh, dp=None, pipeline=None):
    p = {"format": "weft.plan/1", "name": name, "mesh": mesh, "data_parallel": dp or {}}
    if pipeline:
        p["pipeline"] = pipeline
    return p


TWO = [
    _plan("root only", {"dp_shard": 2}),
    _plan("blocks", {"dp_shard": 2}, {"shard_modules": ["blocks.*"]}),
    _plan("blocks kept after forward", {"dp_shard": 2},
          {"shard_modules": ["blocks.*"], "reshard_after_forward": False}),
    _plan("blocks and root resharded", {"dp_shard": 2},
          {"shard_modules": ["blocks.*"], "reshard_after_forward": True}),
    _plan("two of three blocks", {"dp_shard": 2}, {"shard_modules": ["blocks.1", "blocks.2"]}),
]
FOUR = [
    _plan("hsdp", {"dp_replicate": 2, "dp_shard": 2},
          {"replicate": "fsdp", "shard_modules": ["blocks.*"]}),
    _plan("pp gpipe", {"pp": 2, "dp_shard": 2}, {"shard_modules": ["blocks.*"]},
          {"split": ["blocks.1"], "schedule": "gpipe", "microbatches": 2}),
    _plan("pp gpipe, stage roots only", {"pp": 2, "dp_shard": 2}, {},
          {"split": ["blocks.1"], "schedule": "gpipe", "microbatches": 2}),
    _plan("pp gpipe, stage roots resharded", {"pp": 2, "dp_shard": 2},
          {"reshard_after_forward": True},
          {"split": ["blocks.1"], "schedule": "gpipe", "microbatches": 2}),
    _plan("pp 1f1b", {"pp": 2, "dp_shard": 2}, {"shard_modules": ["blocks.*"]},
          {"split": ["blocks.2"], "schedule": "1f1b", "microbatches": 4}),
]


def count_rank(plans: list[dict]) -> list[dict]:
    """Per plan: this rank's collective calls in one training step after a warm-up step,
    and its optimizer's parameter tensors."""
    import torch.distributed as dist

    from weft.planner.measure import _step, _train

    calls: collections.Counter = collections.Counter()
    for name, kind in KINDS.items():
        real = getattr(dist, name)

        def counted(*a, _real=real, _kind=kind, **k):
            calls[_kind] += 1
            return _real(*a, **k)
        setattr(dist, name, counted)
    out = []
    for plan in plans:
        pm, opt, xs, ys, loss_fn = _train(plan, SPEC, BATCH, 1, CFG, False)
        _step(pm, opt, xs, ys, loss_fn)
        dist.barrier()
        calls.clear()
        _step(pm, opt, xs, ys, loss_fn)
        got = dict(calls)
        tensors = sum(len(g["params"]) for g in opt.param_groups)
        out.append({"calls": got, "tensors": tensors, "rank": dist.get_rank()})
        dist.barrier()
    return out


@pytest.fixture(scope="module")
def workload():
    sys.path.insert(0, str(ROOT / "examples"))
    import gpt

    from weft.planner.profile_units import profile_workload

    return profile_workload(gpt.model(**CFG), gpt.example_input, 2, (), repeats=1)


@pytest.mark.slow
@pytest.mark.parametrize("world,plans", [(2, TWO), (4, FOUR)], ids=["2 ranks", "4 ranks"])
def test_fsdp_collectives_and_tensors_are_those_the_runtime_issues(world, plans, workload):
    from weft.launch import launch
    from weft.plan.parse import from_dict
    from weft.planner.dp_cost import units_of
    from weft.planner.plan_cost import PlanModel
    from weft.planner.shape import Shape
    from weft.topology.io import resolve

    got = launch(count_rank, world, args=(plans,), timeout=300)
    model = PlanModel(workload, resolve(f"mesh:{world}"))
    for k, plan in enumerate(plans):
        shape = Shape.of(from_dict(plan), workload, BATCH, world)
        est = model.estimate(shape)
        per_stage = world // shape.pp
        for rank_rows in got:
            row = rank_rows[k]
            r = row["rank"] // per_stage  # the pipeline coordinate (tp fastest, pp slowest)
            want = {kind: n for kind, n in est.calls[r].items() if n}
            assert row["calls"] == want, (plan["name"], r, row["calls"], want)
            layers = [i for st in est.stages if st["stage"] % shape.pp == r
                      for i in range(*st["layers"])]
            assert row["tensors"] == sum(workload.layers[i].tensors for i in layers), plan["name"]
    # the units themselves: 'two of three blocks' is blocks.1, blocks.2 and the root holding
    # the embeddings, blocks.0 and the head
    shape = Shape.of(from_dict(next(p for p in TWO if p["name"] == "two of three blocks")),
                     workload, BATCH, 2)
    units = units_of(shape, workload, range(len(workload)))
    names = [[workload.layers[i].name for i in u] for u in units]
    assert names == [["blocks.1"], ["blocks.2"], ["tok+pos", "blocks.0", "ln_f+head"]]


# -- the model alone (no ranks) ---------------------------------------------------------------
def _transformer():
    from weft.planner.workload import transformer

    return transformer(n_layer=4, d_model=256, n_head=4, seq=128, flops=1e12)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("stages,m", [(2, 1), (2, 4), (4, 3), (4, 8)])
def test_stage_order_is_a_valid_pipeline_schedule(schedule, stages, m):
    from weft.planner.dp_cost import stage_order

    for s in range(stages):
        order = stage_order(schedule, s, stages, m)
        assert order.count("F") == order.count("B") == m
        ahead = [order[:k + 1].count("F") - order[:k + 1].count("B") for k in range(len(order))]
        assert min(ahead) >= 0  # a micro-batch's backward after its forward
        if schedule == "1f1b":  # at most S - s micro-batches in flight (torch's warm-up)
            assert max(ahead) == min(m, stages - s)


def test_no_overlap_exposes_every_collective_and_each_call_costs_its_overhead():
    from weft.planner.plan_cost import Costs, PlanModel
    from weft.planner.shape import Shape
    from weft.topology.builders import multi_node

    wl = _transformer()
    topo = multi_node(1, 4, intra=5e9)
    for shape in (Shape(dp_shard=4, global_batch=16, flavour="fsdp"),
                  Shape(dp_replicate=2, dp_shard=2, global_batch=16, flavour="fsdp"),
                  Shape(pp=2, dp_shard=2, global_batch=16, microbatches=4, flavour="fsdp",
                        bounds=((0, 3), (3, 6))),
                  Shape(dp_replicate=4, global_batch=16, flavour="weft")):
        hidden = PlanModel(wl, topo, Costs()).estimate(shape)  # overlap 1: GPU streams
        off = {"overlap": 0.0, "fsdp_overlap": 0.0}  # blocking collectives (gloo's FSDP2)
        none = PlanModel(wl, topo, Costs(**off)).estimate(shape)
        assert none.terms["data-parallel exposed"] == pytest.approx(
            none.terms["data-parallel total"])
        assert hidden.terms["data-parallel exposed"] <= none.terms["data-parallel exposed"]
        c = 1e-3
        paid = PlanModel(wl, topo, Costs(**off, fsdp_call_s=c)).estimate(shape)
        worst = max(range(shape.pp), key=lambda r: sum(none.calls[r].values()))
        n = none.calls[worst].get("all_gather", 0) + none.calls[worst].get("reduce_scatter", 0)
        assert paid.step_s - none.step_s == pytest.approx(n * c, rel=1e-6)
        if shape.sharded:
            assert n > 0
        # the optimizer pays per tensor: DTensors under fully_shard, plain ones otherwise
        t = 1e-4
        per = PlanModel(wl, topo, Costs(**off, dtensor_tensor_s=t)).estimate(shape)
        plain = PlanModel(wl, topo, Costs(**off, optimizer_tensor_s=t)).estimate(shape)
        tensors = max(sum(wl.layers[i].tensors for st in none.stages
                          if st["stage"] % shape.pp == r for i in range(*st["layers"]))
                      for r in range(shape.pp))
        charged = per if shape.sharded else plain
        assert charged.terms["optimizer"] == pytest.approx(tensors * t)
        other = plain if shape.sharded else per
        assert other.terms["optimizer"] == 0.0


def test_tensor_parallel_modules_pay_their_dtensor_cost_per_micro_batch():
    """`tp_tensor_s` is charged once per DTensor parameter of a tensor-parallel module and
    micro-batch, only when tp > 1 (here one stage, so the step grows by exactly that)."""
    from weft.planner.plan_cost import Costs, PlanModel
    from weft.planner.shape import Shape
    from weft.topology.builders import multi_node

    wl = _transformer()
    topo = multi_node(1, 4, intra=5e9)
    tp_tensors = sum(layer.tp_tensors for layer in wl.layers)
    assert tp_tensors > 0
    c = 1e-3
    for shape, charged in ((Shape(tp=2, dp_replicate=2, global_batch=16, flavour="weft"), True),
                           (Shape(tp=4, global_batch=16, microbatches=1), True),
                           (Shape(dp_replicate=4, global_batch=16, flavour="weft"), False)):
        base = PlanModel(wl, topo, Costs()).estimate(shape)
        paid = PlanModel(wl, topo, Costs(tp_tensor_s=c)).estimate(shape)
        extra = tp_tensors * c if charged else 0.0
        assert paid.step_s - base.step_s == pytest.approx(extra, rel=1e-6, abs=1e-12)
        assert paid.terms["compute"] - base.terms["compute"] == pytest.approx(extra, abs=1e-12)


@pytest.mark.slow
def test_runtime_costs_watch_fully_shard_block_on_gloo():
    """The calibration's fully_shard probe issues what the model counts (3 calls per unit),
    all blocking on gloo, so fully_shard's overlap is 0 whatever the timings; the figures
    are usable by the model (finite, not negative)."""
    import math

    from weft.planner.plan_cost import Costs
    from weft.planner.runtime_costs import measure_runtime_costs

    rc = measure_runtime_costs(2, repeats=1, units=3, tensors=8)
    assert rc.seconds["fsdp_calls"] == 3 * 3 and rc.seconds["fsdp_async_calls"] == 0
    assert rc.fsdp_overlap == 0.0 and 0.0 <= rc.overlap <= 1.0
    for v in (rc.fsdp_call_s, rc.optimizer_tensor_s, rc.dtensor_tensor_s, rc.optimizer_bw,
              rc.tp_tensor_s):
        assert math.isfinite(v) and v >= 0
    costs = rc.apply(Costs(compute_scale=1.5))
    assert costs.compute_scale == 1.5 and costs.fsdp_call_s == rc.fsdp_call_s
    assert costs.tp_tensor_s == rc.tp_tensor_s


def test_fully_shard_cost_per_call_is_taken_round_by_round(monkeypatch):
    """Each round's own step less its plain step and raw collectives, per call, then the
    median: a slow round slows every figure of that round and cancels, where medians
    taken apart mix rounds (here 1.5 ms per call against the rounds' 1.17)."""
    from weft.planner import runtime_costs as rc

    rounds = {"fsdp_step": [40e-3, 80e-3, 42e-3], "plain_step": [1e-3, 2e-3, 1e-3],
              "unit_gather": [5e-3, 5e-3, 11e-3], "unit_scatter": [6e-3, 6e-3, 6e-3]}
    monkeypatch.setattr(rc, "_round_times", lambda fns, repeats: rounds)
    got = rc._fsdp_rounds({}, 3, units=2)
    per = sorted((f - p - 2 * (2 * g + s)) / 6 for f, p, g, s in zip(*rounds.values()))
    assert got["fsdp_call_rounds"] == pytest.approx(per[1])
    assert got["fsdp_step"] == 42e-3 and got["unit_gather"] == 5e-3
    apart = (42e-3 - 1e-3 - 2 * (2 * 5e-3 + 6e-3)) / 6
    assert apart != pytest.approx(per[1])


def test_tensor_parallel_cost_is_taken_round_by_round(monkeypatch):
    """The tp dispatch figure: the median of each round's step less its plain layers
    (here 9 ms: 9, 8 and 10 by round), not the difference of the two medians (10 ms)."""
    from weft.planner import runtime_costs as rc

    rounds = {"tp_step": [10e-3, 30e-3, 12e-3], "tp_local": [1e-3, 22e-3, 2e-3]}
    monkeypatch.setattr(rc, "_round_times", lambda fns, repeats: rounds)
    got = rc._tp_rounds({}, 3)
    assert got["tp_rounds"] == pytest.approx(9e-3)
    assert got["tp_step"] - got["tp_local"] == pytest.approx(10e-3)


def test_optimizer_rate_is_measured_at_the_models_size():
    """Adam's large case holds the model's parameters (at least 8x the small case), else
    32x the small case; a size that is not positive is refused before any rank starts."""
    from weft.errors import PlanError
    from weft.planner.runtime_costs import _large, measure_runtime_costs

    assert _large(None, 1024) == 32 * 1024
    assert _large(828_672, 1024) == 828_672
    assert _large(3000, 1024) == 8 * 1024
    with pytest.raises(PlanError, match="optimizer_numel must be >= 1, got 0"):
        measure_runtime_costs(2, optimizer_numel=0)
