"""The plan format: parsing, errors naming field and value, round trips, checks against a model."""

import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import weft.plan as wp
from weft.errors import PlanError, WeftError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))
import gpt

BASE = "format: weft.plan/1\n"


def test_example_plans_load_and_check():
    model = gpt.model()
    for path in sorted((EXAMPLES / "plans").glob("*.yaml")):
        plan = wp.load(path)
        world = plan.mesh.size if plan.mesh.resolved else 4
        resolved = wp.check(plan, model, world)
        assert resolved.mesh.size == world, path
        assert wp.load(path) == plan


def test_minus_one_is_inferred():
    plan = wp.loads(BASE + "mesh: {dp_shard: -1, tp: 2}\n"
                    "tensor_parallel: [{module: 'blocks.*.mlp.fc', style: colwise}]")
    assert plan.mesh.resolve(8) == wp.Mesh(1, 1, 4, 2)
    assert wp.Plan().mesh.resolve(1).size == 1


@pytest.mark.parametrize("text,field,value", [
    ("mesh: {tp: 2}", "format", "missing"),
    ("format: weft.plan/2", "format", "'weft.plan/2'"),
    (BASE + "mesh: {tp: two}", "mesh.tp", "'two'"),
    (BASE + "mesh: {tp: 0}", "mesh.tp", "0"),
    (BASE + "mesh: {tp: -1, dp_shard: -1}", "mesh.tp", "-1"),
    (BASE + "mesh: {cp: 2}", "mesh", "'cp'"),
    (BASE + "colour: red", "top level", "'colour'"),
    (BASE + "data_parallel: {replicate: horovod}", "data_parallel.replicate", "'horovod'"),
    (BASE + "data_parallel: {communicator: nccl}", "data_parallel.communicator", "'nccl'"),
    (BASE + "data_parallel: {bucket_mb: -3}", "data_parallel.bucket_mb", "-3"),
    (BASE + "data_parallel: {reshard_after_forward: maybe}",
     "data_parallel.reshard_after_forward", "'maybe'"),
    (BASE + "mesh: {dp_shard: 2}\ndata_parallel: {replicate: ddp}", "data_parallel.replicate", "'ddp'"),
    (BASE + "mesh: {dp_replicate: 2, tp: 2}\ndata_parallel: {replicate: ddp}\n"
     "tensor_parallel: [{module: a, style: colwise}]", "data_parallel.replicate", "'ddp'"),
    (BASE + "mesh: {dp_shard: 2}\ndata_parallel: {communicator: weft}",
     "data_parallel.communicator", "'weft'"),
    (BASE + "mesh: {tp: 2}", "mesh.tp", "2"),
    (BASE + "tensor_parallel: [{module: a, style: diagonal}]", "tensor_parallel[0].style",
     "'diagonal'"),
    (BASE + "tensor_parallel: [{style: colwise}]", "tensor_parallel[0]", "'module'"),
    (BASE + "tensor_parallel: [{module: a}]", "tensor_parallel[0]", "'a'"),
    (BASE + "tensor_parallel: [{module: a, style: colwise, input_layouts: diagonal}]",
     "tensor_parallel[0].input_layouts", "'diagonal'"),
    (BASE + "tensor_parallel: [{module: a, style: colwise, sequence_dim: 1}]",
     "tensor_parallel[0].sequence_dim", "'colwise'"),
    (BASE + "tensor_parallel: [{module: a, style: rowwise, output_layouts: [replicate, replicate]}]",
     "tensor_parallel[0].output_layouts", "rowwise"),
    (BASE + "tensor_parallel: [{module: a, style: prepare_input, input_layouts: replicate}]",
     "tensor_parallel[0]", "desired_input_layouts"),
    (BASE + "tensor_parallel: [{module: a, divide: [3]}]", "tensor_parallel[0].divide[0]", "3"),
    (BASE + "mesh: {pp: 2}", "mesh.pp", "2"),
    (BASE + "pipeline: {schedule: zigzag}", "pipeline.schedule", "'zigzag'"),
    (BASE + "pipeline: {schedule: 'torch:ZeroBubbleXL'}", "pipeline.schedule", "'torch:ZeroBubbleXL'"),
    (BASE + "pipeline: {microbatches: 0}", "pipeline.microbatches", "0"),
    (BASE + "mesh: {pp: 2}\npipeline: {split: [a, b], schedule: gpipe}", "pipeline.split", "['a', 'b']"),
    (BASE + "mesh: {pp: 2}\npipeline: {split: [a], schedule: interleaved}",
     "pipeline.stages_per_rank", "1"),
    (BASE + "mesh: {pp: 2}\npipeline: {split: [a, b, c], schedule: 'torch:ZBVZeroBubble', "
     "stages_per_rank: 3}", "pipeline.stages_per_rank", "3"),
    (BASE + "mesh: {pp: 2}\npipeline: {split: [a, b, c], schedule: interleaved, stages_per_rank: 2,"
     " microbatches: 3}", "pipeline.microbatches", "3"),
    (BASE + "activation_checkpoint: [1]", "activation_checkpoint[0]", "1"),
    (BASE + "mixed_precision: {param_dtype: fp8}", "mixed_precision.param_dtype", "'fp8'"),
    ("- just\n- a list", "top level", "['just', 'a list']"),
    ("mesh: {tp: [", "not valid YAML", ""),
])
def test_bad_plans_name_field_and_value(text, field, value):
    with pytest.raises(PlanError) as err:
        wp.loads(text, source="p.yaml")
    msg = str(err.value)
    assert msg.startswith("p.yaml: ") and field in msg and value in msg, msg
    assert isinstance(err.value, WeftError)


def test_torch_schedule_names_are_case_insensitive_and_canonical():
    plan = wp.loads(BASE + "mesh: {pp: 2}\npipeline: {split: [a, b, c], schedule: 'torch:zbvzerobubble',"
                    " stages_per_rank: 2}")
    assert plan.pipeline.schedule == "torch:ZBVZeroBubble"


def test_load_reports_missing_file(tmp_path):
    with pytest.raises(PlanError, match="nope.yaml: cannot read plan file"):
        wp.load(tmp_path / "nope.yaml")


# -- checks against a model ----------------------------------------------------------

def _gpt_plan(**over):
    data = {"format": wp.FORMAT, "mesh": {"dp_replicate": -1, "tp": 2},
            "tensor_parallel": [{"module": "blocks.*.attn.[qkv]", "style": "colwise"},
                                {"module": "blocks.*.attn", "divide": ["n_head"]}]}
    data.update(over)
    return wp.from_dict(data)


@pytest.mark.parametrize("plan,world,field,value", [
    (_gpt_plan(), 3, "mesh.dp_replicate", "world size 3"),
    (_gpt_plan(mesh={"dp_replicate": 3, "tp": 2}), 4, "mesh", "6 ranks, but the world has 4"),
    (_gpt_plan(tensor_parallel=[{"module": "blocks.*.atn.q", "style": "colwise"}]), 4,
     "tensor_parallel[0].module", "'blocks.*.atn.q'"),
    (_gpt_plan(tensor_parallel=[{"module": "blocks.*.attn", "style": "colwise"}]), 4,
     "tensor_parallel[0].style", "'colwise'"),
    (_gpt_plan(mesh={"tp": 3}), 3, "tensor_parallel[0]", "out_features=64"),
    (_gpt_plan(tensor_parallel=[{"module": "blocks.*.attn.q", "style": "colwise"},
                                {"module": "blocks.*.attn", "divide": ["heads"]}]), 4,
     "tensor_parallel[1].divide[0]", "'heads'"),
    (_gpt_plan(tensor_parallel=[{"module": "blocks.*.attn.q", "style": "colwise"},
                                {"module": "blocks.*.attn.*", "style": "rowwise"}]), 4,
     "tensor_parallel[1].module", "second style"),
    (_gpt_plan(activation_checkpoint=["layers.*"]), 4, "activation_checkpoint[0]", "'layers.*'"),
    (_gpt_plan(data_parallel={"shard_modules": ["block"]}), 4, "data_parallel.shard_modules[0]",
     "'block'"),
    (_gpt_plan(mesh={"pp": 2}, pipeline={"split": ["blocks.7"]}, tensor_parallel=[]), 2,
     "pipeline.split[0]", "'blocks.7'"),
    (_gpt_plan(mesh={"pp": 3}, pipeline={"split": ["blocks.1", "blocks.0"]}, tensor_parallel=[]), 3,
     "pipeline.split[1]", "'blocks.0'"),
    # weft's communicator on a named topology: the placement's devices must be in it; without
    # a placement the topology is one data-parallel group's
    (_gpt_plan(data_parallel={"replicate": "weft", "communicator": "weft", "topology": "ring:4"},
               placement=["gpu3", "gpu1", "n0.gpu2", "gpu0"]), 4, "placement[2]", "'n0.gpu2'"),
    (_gpt_plan(data_parallel={"replicate": "weft", "communicator": "weft", "topology": "ring:4"}),
     4, "data_parallel.topology", "4 compute devices but a data-parallel group has 2"),
    (_gpt_plan(data_parallel={"replicate": "weft", "communicator": "weft",
                              "topology": "no/such/topology.yaml"}), 4,
     "data_parallel.topology", "no/such/topology.yaml"),
])
def test_check_errors_name_field_and_value(plan, world, field, value):
    with pytest.raises(PlanError) as err:
        wp.check(plan, gpt.model(), world)
    assert field in str(err.value) and value in str(err.value), str(err.value)


def test_weft_communicator_topology_fits_the_placement_or_a_group():
    """What weft.parallelize then runs: the placement's devices of the topology, or a
    topology of one data-parallel group's size in rank order."""
    dp = {"replicate": "weft", "communicator": "weft", "topology": "ring:4"}
    placed = wp.check(_gpt_plan(data_parallel=dp, placement=["gpu3", "gpu1", "gpu2", "gpu0"]),
                      gpt.model(), 4)
    assert placed.placement == ("gpu3", "gpu1", "gpu2", "gpu0")
    wp.check(_gpt_plan(data_parallel={**dp, "topology": "ring:2"}), gpt.model(), 4)
    wp.check(_gpt_plan(data_parallel={**dp, "topology": "ring:4"}), gpt.model(), 2)  # dp1


def test_memory_check():
    model = gpt.model()
    nbytes = sum(p.numel() * 4 for p in model.parameters())
    single = wp.from_dict({"format": wp.FORMAT})
    assert wp.memory_per_rank(single, model) == 4 * nbytes  # params, grads, two Adam moments
    fsdp = wp.check(wp.load(EXAMPLES / "plans" / "fsdp.yaml"), model, 4)
    assert wp.memory_per_rank(fsdp, model) < 4 * nbytes / 3  # sharded four ways (ceil chunks)
    wp.check(single, model, 1, device_memory=4 * nbytes)
    with pytest.raises(PlanError, match=r"mesh: pp=1 x .* needs about .* GiB per rank"):
        wp.check(single, model, 1, device_memory=4 * nbytes - 1)


def test_patterns():
    assert wp.match("blocks.*.attn", "blocks.0.attn")
    assert not wp.match("blocks.*", "blocks.0.attn")  # '*' stays inside one atom
    assert wp.match("**.fc", "blocks.3.mlp.fc") and wp.match("**.fc", "fc")
    assert wp.match("blocks.[01].mlp", "blocks.1.mlp")
    assert not wp.match("blocks.[01].mlp", "blocks.2.mlp")
    assert wp.matching("blocks.*.attn.[qkv]", gpt.model()) == [
        f"blocks.{i}.attn.{x}" for i in range(2) for x in "qkv"]


# -- round trips (property) ---------------------------------------------------------

_names = st.from_regex(r"[a-z]{1,6}(\.(\*|[a-z0-9]{1,4})){0,2}", fullmatch=True)
_layout = st.sampled_from(["replicate", "shard(0)", "shard(1)", "shard(-1)"])


@st.composite
def _rules(draw):
    style = draw(st.sampled_from(wp.format.STYLES + (None,)))
    kw = {"module": draw(_names), "style": style}
    if style is None or draw(st.booleans()):
        kw["divide"] = tuple(draw(st.lists(st.sampled_from(["n_head", "n_kv", "heads"]),
                                           min_size=1, max_size=2)))
    if style in ("colwise", "rowwise"):
        for k in ("input_layouts", "output_layouts"):
            if draw(st.booleans()):
                kw[k] = (draw(_layout),)
    if style == "prepare_input":
        n = draw(st.integers(1, 3))
        kw["input_layouts"] = tuple(draw(st.lists(_layout, min_size=n, max_size=n)))
        kw["desired_input_layouts"] = tuple(draw(st.lists(_layout, min_size=n, max_size=n)))
    if style == "sequence_parallel" and draw(st.booleans()):
        kw["sequence_dim"] = draw(st.integers(-2, 2))
    if style not in (None, "replicate") and draw(st.booleans()):
        kw["use_local_output"] = draw(st.booleans())
    return wp.TPRule(**kw)


@st.composite
def plans(draw):
    deg = st.sampled_from([1, 1, 2, 4, -1])
    mesh = wp.Mesh(*(draw(deg) for _ in range(4)))
    assume(list(mesh.degrees().values()).count(-1) <= 1)
    dp = wp.DataParallel(
        replicate=draw(st.sampled_from(wp.format.REPLICATE)),
        communicator=draw(st.sampled_from(wp.format.COMMUNICATORS)),
        topology=draw(st.sampled_from(["auto", "dgx1", "ring:4", "topo.yaml"])),
        bucket_mb=draw(st.floats(0.01, 1000, allow_nan=False)),
        shard_modules=tuple(draw(st.lists(_names, max_size=2))),
        reshard_after_forward=draw(st.sampled_from([None, True, False])))
    pipe = None
    if mesh.pp != 1 or draw(st.booleans()):
        sched = draw(st.sampled_from(wp.format.WEFT_SCHEDULES
                                     + tuple("torch:" + s for s in wp.format.TORCH_SCHEDULES)))
        spr = 2 if sched in wp.format.MULTI_STAGE else 1
        pp = mesh.pp if mesh.pp > 0 else 1
        split = draw(st.one_of(st.just("planner"),
                               st.lists(_names, min_size=pp * spr - 1, max_size=pp * spr - 1,
                                        unique=True).map(tuple)))
        pipe = wp.Pipeline(split=split, schedule=sched, stages_per_rank=spr,
                           microbatches=pp * draw(st.integers(1, 4)))
    mp = draw(st.one_of(st.none(), st.builds(wp.MixedPrecision,
                                             st.sampled_from(wp.format.DTYPES),
                                             st.sampled_from(wp.format.DTYPES))))
    rules = tuple(draw(st.lists(_rules(), max_size=4)))
    plan = wp.Plan(mesh=mesh, data_parallel=dp, tensor_parallel=rules,
                   pipeline=pipe, activation_checkpoint=tuple(draw(st.lists(_names, max_size=2))),
                   mixed_precision=mp, name=draw(st.sampled_from(["", "x", "gpt dp"])))
    try:
        wp.validate(plan)
    except PlanError:
        assume(False)
    return plan


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(plans())
def test_round_trip(plan):
    assert wp.from_dict(wp.to_dict(plan)) == plan
    assert wp.loads(wp.dumps(plan, "yaml")) == plan
    assert wp.loads(wp.dumps(plan, "json")) == plan
    assert json.loads(wp.dumps(plan, "json")) == wp.to_dict(plan)
    with tempfile.TemporaryDirectory() as d:
        for name in ("p.yaml", "p.json"):
            wp.save(plan, Path(d) / name)
            again = wp.load(Path(d) / name)
            assert again == plan
            wp.save(again, Path(d) / name)
            assert wp.load(Path(d) / name) == plan


# -- what each rank holds, against torch.chunk on real tensors -----------------------

@settings(max_examples=25, deadline=None)
@given(st.sampled_from([(1, 1, 1, 1), (1, 4, 1, 1), (1, 1, 4, 1), (1, 1, 1, 4), (1, 2, 1, 2),
                        (1, 1, 2, 2), (1, 2, 2, 1), (1, 1, 3, 1), (1, 1, 8, 2)]),
       st.sampled_from(["weft", "fsdp"]))
def test_describe_matches_torch_chunk(degrees, replicate):
    model = gpt.model(n_layer=1)
    mesh = dict(zip(wp.DIMS, degrees))
    plan = wp.from_dict({
        "format": wp.FORMAT, "mesh": mesh,
        "data_parallel": {"replicate": replicate if mesh["dp_shard"] == 1 else "fsdp"},
        "tensor_parallel": [{"module": "blocks.*.attn.[qkv]", "style": "colwise"},
                            {"module": "blocks.*.attn.proj", "style": "rowwise"},
                            {"module": "tok", "style": "rowwise"},
                            {"module": "blocks.*.attn", "divide": ["n_head"]}]})
    world = 1
    for d in degrees:
        world *= d
    views = wp.describe(plan, model, world)
    params = dict(model.named_parameters())
    tp_dims = {"blocks.0.attn.q.weight": 0, "blocks.0.attn.k.weight": 0, "blocks.0.attn.v.weight": 0,
               "blocks.0.attn.proj.weight": 1, "tok.weight": 0}
    fsdp = mesh["dp_shard"] > 1 or (replicate == "fsdp" and mesh["dp_replicate"] > 1)
    covered = {n: 0 for n in params}
    for v in views:
        assert wp.coords_of(v.rank, plan.mesh.resolve(world)) == v.coords
        for name, full, local, _ in v.params:
            t = params[name].detach()
            if name in tp_dims and mesh["tp"] > 1:
                t = t.chunk(mesh["tp"], tp_dims[name])[v.coords["tp"]]
            if fsdp:
                parts = t.chunk(mesh["dp_shard"], 0)
                t = parts[v.coords["dp_shard"]] if v.coords["dp_shard"] < len(parts) else t[:0]
            assert tuple(t.shape) == local, (name, v.coords, t.shape, local)
            if v.coords["dp_replicate"] == 0 and (name in tp_dims or v.coords["tp"] == 0):
                covered[name] += t.numel()  # each piece once
    for name, p in params.items():
        assert covered[name] == p.numel(), name
    groups = wp.groups(plan.mesh.resolve(world))
    for d, gs in groups.items():
        assert sorted(r for g in gs for r in g) == list(range(world)), d


def test_show_text():
    text = wp.show(EXAMPLES / "plans" / "dp_tp.yaml", gpt.model(), world=4)
    assert "mesh pp=1 x dp_replicate=2 x dp_shard=1 x tp=2" in text
    assert "tp groups: [0,1] [2,3]" in text and "dp_replicate groups: [0,2] [1,3]" in text
    assert "blocks.0.attn.q.weight               [64, 64]       -> [32, 64]" in text
    with pytest.raises(PlanError, match="give the world size"):
        wp.describe(wp.load(EXAMPLES / "plans" / "dp.yaml"), gpt.model())


def test_show_loads_a_model_spec():
    text = wp.show(EXAMPLES / "plans" / "fsdp.yaml", str(EXAMPLES / "gpt.py"), world=2, params=False)
    assert text.count("rank ") == 2 and "fully_shard over 2" in text


def test_plan_without_process_group_is_checked_against_sequential():
    m = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 6))
    plan = wp.from_dict({"format": wp.FORMAT, "mesh": {"tp": 2},
                         "tensor_parallel": [{"module": "0", "style": "colwise"}]})
    with pytest.raises(PlanError,
                       match=r"tensor_parallel\[0\]: mesh.tp=2 does not divide 0.out_features=9"):
        wp.check(plan, m, 2)
    assert torch.is_tensor(m[0].weight)
