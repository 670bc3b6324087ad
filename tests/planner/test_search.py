"""The plan search: the same choice as exhaustive search under the same cost model."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.errors import PlanError
from weft.plan.io import loads
from weft.planner.plan_cost import Costs, PlanModel
from weft.planner.search import (
    Space,
    candidates,
    exhaustive,
    lower_bound,
    memory_floor,
    search,
)
from weft.planner.workload import transformer
from weft.topology.builders import multi_node

GiB = 2**30


def _labels(found):
    return [(e.shape.label(), round(e.step_s, 12)) for e in found.top]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_layer=st.integers(2, 6), d_model=st.sampled_from([256, 512, 1024]),
       seq=st.sampled_from([128, 512]), nodes=st.integers(1, 2), per=st.sampled_from([2, 4]),
       inter=st.sampled_from([1e9, 12.5e9]), mem=st.sampled_from([None, 0.25, 2.0]),
       batch=st.sampled_from([8, 16]), interleaved=st.booleans(), top=st.integers(1, 5))
def test_search_equals_exhaustive(n_layer, d_model, seq, nodes, per, inter, mem, batch,
                                  interleaved, top):
    if nodes * per < 2:
        return
    wl = transformer(n_layer=n_layer, d_model=d_model, n_head=8, seq=seq, vocab=4096,
                     flops=5e12, dtype_bytes=4)
    model = PlanModel(wl, multi_node(nodes, per, inter=inter), Costs(compute_scale=1.1))
    space = Space(interleaved=interleaved)
    memory = None if mem is None else mem * GiB
    n = nodes * per
    a = search(wl, model, n, batch, memory, space, top=top)
    b = exhaustive(wl, model, n, batch, memory, space, top=top)
    assert _labels(a) == _labels(b)
    assert a.evaluated <= b.evaluated


def test_bounds_are_bounds():
    """The pruning bounds never exceed the exact values, for every candidate."""
    wl = transformer(n_layer=6, d_model=512, n_head=8, seq=256, vocab=4096, flops=5e12)
    model = PlanModel(wl, multi_node(2, 4, inter=2e9))
    space = Space(interleaved=True)
    for c in candidates(wl, 8, 32, space, 4):
        est = model.estimate(c)
        assert lower_bound(model, c) <= est.step_s * (1 + 1e-9), c.label()
        assert memory_floor(c, wl) <= est.peak_bytes * (1 + 1e-9), c.label()


def test_memory_limit_and_runnable_constraint_are_honoured():
    wl = transformer(n_layer=8, d_model=1024, n_head=8, seq=512, vocab=8192, flops=5e12,
                     dtype_bytes=4)
    model = PlanModel(wl, multi_node(2, 4))
    free = search(wl, model, 8, 32, None, Space(), top=3).best
    limit = free.peak_bytes * 0.5
    tight = search(wl, model, 8, 32, limit, Space(), top=20)
    assert tight.top and all(e.peak_bytes <= limit for e in tight.top)

    def no_pp(shape):
        return "pp" if shape.pp > 1 else None
    found = search(wl, model, 8, 32, None, Space(runnable=no_pp), top=20)
    assert all(e.shape.pp == 1 for e in found.top) and found.rejected.get("pp")


def test_an_empty_search_says_why():
    """A batch no mesh of the devices can run names the batch; a memory limit nothing meets
    says so (both were "every candidate was pruned; rejected: {}")."""
    wl = transformer(n_layer=4, d_model=256, n_head=8, seq=128, vocab=4096, flops=5e12)
    model = PlanModel(wl, multi_node(4, 4))
    none = search(wl, model, 16, 1, None, Space(max_tp=1), top=3)
    assert none.candidates == 0
    with pytest.raises(PlanError, match=r"no candidate plan.*raise the batch"):
        none.best
    tiny = search(wl, model, 4, 8, 1.0, Space(), top=3)
    with pytest.raises(PlanError, match=rf"of {tiny.candidates} candidates, "
                                        rf"{tiny.pruned_memory} need more memory"):
        tiny.best
    assert tiny.candidates and tiny.pruned_memory


def test_auto_with_nothing_to_choose_says_why_and_prints_no_table(tmp_path, capsys):
    from weft.cli import main

    out = tmp_path / "plan.yaml"
    model = "transformer:n_layer=4,d_model=256,n_head=4,seq=64,vocab=1024,flops=1e12"
    rc = main(["plan", "auto", "--model", model, "--topology", "multi_node:4x4", "--batch", "1",
               "--out", str(out)])
    got = capsys.readouterr()
    assert rc == 2 and "no candidate plan" in got.err and "raise the batch" in got.err
    assert "plans for" not in got.out and not out.exists()


def test_a_large_search_finishes_within_memory():
    """12 layers on 64 devices (the benchmark times 48 on 1,024): the best fits memory and
    the bound pruned part of the space."""
    wl = transformer(n_layer=12, d_model=2048, n_head=16, seq=2048, flops=300e12)
    model = PlanModel(wl, multi_node(8, 8, style="switch"))
    found = search(wl, model, 64, 256, 8 * GiB, Space(interleaved=True), top=5)
    best = found.best
    assert best.peak_bytes <= 16 * GiB
    assert best.shape.world == 64 and found.evaluated < found.candidates


def test_auto_writes_a_plan_that_loads(tmp_path, capsys):
    from weft.cli import main

    out = tmp_path / "plan.yaml"
    model = "transformer:n_layer=4,d_model=256,n_head=4,seq=64,vocab=1024,flops=1e12"
    rc = main(["plan", "auto", "--model", model, "--topology", "multi_node:2x2", "--batch", "16",
               "--out", str(out), "--any"])
    assert rc == 0
    plan = loads(out.read_text(), str(out))
    assert plan.mesh.size == 4
    text = capsys.readouterr().out
    assert "best plan written" in text
    rc = main(["plan", "explain", str(out), "--model", model, "--topology", "multi_node:2x2",
               "--batch", "16"])
    assert rc == 0
    text = capsys.readouterr().out
    for term in ("compute", "tensor-parallel collectives", "pipeline bubble",
                 "data-parallel exposed", "optimizer state", "activations"):
        assert term in text


def test_auto_refuses_bad_input(capsys):
    from weft.cli import main

    assert main(["plan", "auto", "--model", "transformer:n_layer=x", "--topology",
                 "ring:4"]) == 2
    assert "n_layer" in capsys.readouterr().err
    assert main(["plan", "auto", "--topology", "ring:4"]) == 2
    capsys.readouterr()
    assert main(["plan", "auto", "--model", "transformer:n_layer=2", "--topology", "ring:4",
                 "--calibrate", "1"]) == 2
    assert "--calibrate: must be >= 2 (ranks to measure on), got 1" in capsys.readouterr().err


def test_calibrate_applies_the_measured_runtime_costs(tmp_path, capsys, monkeypatch):
    """`--calibrate N` measures on N ranks (replaced here: no ranks start) and the plan is
    costed with what was measured: a cost per DTensor shows in the optimizer term."""
    from weft.cli import main
    from weft.planner.runtime_costs import RuntimeCosts

    asked = []

    def fake(world, **kw):
        asked.append(world)
        return RuntimeCosts(0.0, 0.0, 1e-3, 0.0, 1e12, 0.25, world)
    monkeypatch.setattr("weft.planner.runtime_costs.measure_runtime_costs", fake)
    plan = tmp_path / "fsdp.yaml"
    plan.write_text("format: weft.plan/1\nmesh: {dp_shard: 4}\n")
    model = "transformer:n_layer=2,d_model=64,n_head=4,seq=32,vocab=128,flops=1e12"
    argv = ["plan", "explain", str(plan), "--model", model, "--topology", "ring:4",
            "--batch", "8"]

    def optimizer_ms(text):
        line = next(l for l in text.splitlines() if l.strip().startswith("+ optimizer "))
        return float(line.split()[2])
    assert main(argv) == 0
    before = optimizer_ms(capsys.readouterr().out)
    assert main(argv + ["--calibrate", "3"]) == 0
    out = capsys.readouterr().out
    assert asked == [3] and "runtime costs measured: overlap 0.00" in out
    # 2 blocks x 12 tensors + embeddings 2 + head 3, each a DTensor at 0.25 s
    assert optimizer_ms(out) - before == pytest.approx(29 * 250, rel=1e-3)


@pytest.mark.parametrize("spec", ["examples/gpt.py"])
def test_auto_on_a_real_model_writes_a_runnable_plan(tmp_path, spec):
    """Profiled GPT: the written plan passes weft.plan.check against the model."""
    from weft.cli import main

    out = tmp_path / "p.yaml"
    assert main(["plan", "auto", "--model", spec, "--topology", "multi_node:2x2", "--batch",
                 "16", "--micro-batch", "4", "--repeats", "1", "--out", str(out),
                 "--top", "3"]) == 0
    from weft.model_spec import load_model
    from weft.plan.check import check

    plan = loads(out.read_text())
    check(plan, load_model(spec), 4)


def test_weft_communicator_serves_the_data_parallel_all_reduce_only():
    """With weft's communicator the data-parallel all-reduce is the autotuner's choice on the
    topology (never slower than the ring in the model, faster over the DGX-1's NVLink mesh),
    while the tensor-parallel collectives stay torch's (DTensor runs them) either way."""
    from dataclasses import replace

    from weft.planner.shape import Shape
    from weft.topology.builders import dgx1

    wl = transformer(n_layer=4, d_model=512, n_head=8, seq=256, vocab=4096, flops=5e12)
    model = PlanModel(wl, dgx1())
    gain = {}
    for dr, tp in ((8, 1), (4, 2), (2, 4)):
        torch_ = Shape(1, dr, 1, tp, 32, flavour="weft")
        et, ew = model.estimate(torch_), model.estimate(replace(torch_, communicator="weft"))
        assert ew.terms["tensor-parallel collectives"] == et.terms["tensor-parallel collectives"]
        assert ew.terms["compute"] == et.terms["compute"]
        gain[dr] = et.terms["data-parallel total"] / ew.terms["data-parallel total"]
        assert gain[dr] >= 1 - 1e-9, (dr, tp)
    assert gain[8] > 1.2
    # fully_shard's collectives are torch's: the plan's communicator changes nothing there
    fsdp = Shape(1, 1, 8, 1, 32, flavour="fsdp")
    assert model.estimate(fsdp).step_s == model.estimate(replace(fsdp, communicator="weft")).step_s


def test_search_with_weft_communicator_equals_exhaustive():
    wl = transformer(n_layer=3, d_model=256, n_head=8, seq=128, vocab=4096, flops=5e12)
    model = PlanModel(wl, multi_node(2, 2, inter=2e9))
    space = Space(communicator="weft")
    a = search(wl, model, 4, 16, None, space, top=4)
    b = exhaustive(wl, model, 4, 16, None, space, top=4)
    assert _labels(a) == _labels(b)
    for e in a.top:
        assert e.shape.communicator == ("weft" if e.shape.flavour == "weft" else "torch")


def test_auto_with_weft_communicator_writes_the_topology_and_placement(tmp_path, capsys):
    """The written plan runs weft's collectives where the model costed them: the topology
    named in the plan, every rank's device given, and the plan passes the format's check."""
    from weft.cli import main
    from weft.plan.check import _check_communicator

    out = tmp_path / "plan.yaml"
    model = "transformer:n_layer=2,d_model=1024,n_head=8,seq=64,vocab=1024,flops=1e14"
    rc = main(["plan", "auto", "--model", model, "--topology", "dgx1", "--batch", "64",
               "--communicator", "weft", "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    plan = loads(out.read_text(), str(out))
    dp = plan.data_parallel
    assert plan.mesh.dp_replicate > 1 and plan.mesh.dp_shard == 1  # weft's DataParallel won
    assert (dp.replicate, dp.communicator, dp.topology) == ("weft", "weft", "dgx1")
    assert len(plan.placement) == plan.mesh.size
    assert set(plan.placement) <= {f"gpu{i}" for i in range(8)}
    _check_communicator(plan)  # what weft train --plan checks before starting a rank
    capsys.readouterr()
    assert main(["plan", "explain", str(out), "--model", model, "--topology", "dgx1",
                 "--batch", "64"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines()
                if "data-parallel all-reduce (weft's)" in l)
    assert any(a in line for a in ("ring", "dbtree", "packing", "flat"))  # the choice named
    # a topology file is named by its absolute path: the plan runs from any directory
    topo = tmp_path / "t.yaml"
    assert main(["topology", "save", "dgx1", str(topo)]) == 0
    rc = main(["plan", "auto", "--model", model, "--topology", str(topo), "--batch", "64",
               "--communicator", "weft", "--no-place", "--out", str(out)])
    assert rc == 0
    plan = loads(out.read_text(), str(out))
    assert plan.data_parallel.topology == str(topo.resolve())
    assert len(plan.placement) == plan.mesh.size  # rank order, written out


TIED = '''
import torch
from torch import nn
class Tied(nn.Module):
    def __init__(s, v=64, d=32):
        super().__init__()
        s.emb = nn.Embedding(v, d)
        s.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(3))
        s.head = nn.Linear(d, v, bias=False)
        s.head.weight = s.emb.weight
    def forward(s, x):
        h = s.emb(x)
        for b in s.blocks:
            h = torch.relu(b(h))
        return s.head(h)
def model():
    torch.manual_seed(0)
    return Tied()
def example_input(b):
    return torch.randint(0, 64, (b, 8))
def loss_fn(logits, y):
    return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
'''


def test_auto_costs_the_sync_of_weights_tied_across_stages(tmp_path, capsys):
    """A model whose embedding and head share their weight: pipeline plans are searched
    (weft.parallelize sums the copies' gradients between the stages' ranks,
    weft.parallel.tied), charged an all-reduce of the tied bytes between the first and
    last stage; the layers and bytes are found."""
    from weft.cli import main
    from weft.model_spec import load_model
    from weft.planner.auto_cli import tied_layers
    from weft.planner.profile_units import profile_workload
    from weft.planner.shape import Shape

    spec = tmp_path / "tied.py"
    spec.write_text(TIED)
    out = tmp_path / "p.yaml"
    assert main(["plan", "auto", "--model", str(spec), "--topology", "multi_node:2x2",
                 "--batch", "16", "--micro-batch", "4", "--repeats", "1", "--out",
                 str(out)]) == 0
    assert "tied" not in capsys.readouterr().out  # nothing rejected for it
    model = load_model(str(spec))
    wl = profile_workload(model, lambda b: __import__("torch").randint(0, 64, (b, 8)), 4,
                          repeats=1)
    spans = tied_layers(wl, model)
    assert len(spans) == 1
    first, last, nbytes = spans[0]
    assert "emb" in wl.layers[first].modules and "head" in wl.layers[last].modules
    assert nbytes == 64 * 32 * 4  # the embedding's weight, counted once
    topo = multi_node(2, 2)
    shape = Shape(pp=2, dp_replicate=2, global_batch=16, microbatches=4)
    plain = PlanModel(wl, topo).estimate(shape)
    wl.meta["tied"] = [list(spans[0])]
    tied = PlanModel(wl, topo).estimate(shape)
    t = tied.terms["tied-weight sync"]
    assert plain.terms["tied-weight sync"] == 0 and t > 0
    assert tied.step_s >= plain.step_s + t * 0.99  # after the schedule, on top of the rest
    one = PlanModel(wl, topo).estimate(Shape(dp_replicate=4, global_batch=16))
    assert one.terms["tied-weight sync"] == 0  # no pipeline: one copy per rank


def test_auto_keeps_every_pipeline_weft_parallelize_runs():
    """pp x tp, checkpointing with pp and interleaved stages all run under weft.parallelize
    (tests/parallel/test_parallelize.py's pp-tp, pp-dp-interleaved-ac); what its pipeline
    check refuses is still refused, with that check's reason."""
    from weft.planner.auto_cli import runnable
    from weft.planner.shape import Shape

    why = runnable(16)
    base = dict(pp=2, global_batch=16, microbatches=4)
    assert why(Shape(**base, tp=2)) is None
    assert why(Shape(**base, dp_replicate=2, checkpoint=(1, 2))) is None
    assert why(Shape(**base, dp_replicate=2, schedule="interleaved", stages_per_rank=2)) is None
    assert why(Shape(**base, dp_replicate=2, schedule="torch:ZBVZeroBubble",
                     stages_per_rank=2)) == "pipeline.schedule"
    assert why(Shape(pp=2, dp_replicate=2, global_batch=16, microbatches=16)) == \
        "pipeline.microbatches"
