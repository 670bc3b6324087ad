"""Tied weights under a plan (weft.parallel.tied): what is refused before any traffic, and
where a tied weight's uses land. Training with them equals single-process training:
tests/parallel/test_parallelize.py (the `tied-*` cases)."""

import sys
from pathlib import Path

import pytest
import torch

import weft.plan as wp
from weft.errors import PlanError
from weft.parallel.split import split_model
from weft.parallel.tied import check_schedule, retie, ties
from weft.plan.check import shard_units
from weft.plan.describe import stage_rank

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))
import gpt

# the example plan's rules: a row-wise embedding and a column-wise head (both Shard(0))
TP = wp.to_dict(wp.load(EXAMPLES / "plans" / "tp.yaml"))["tensor_parallel"]


def tied_gpt():
    m = gpt.model(n_layer=2)
    m.head.weight = m.tok.weight
    return m


def _plan(**over):
    return wp.from_dict({"format": "weft.plan/1", "name": "t", "mesh": {"tp": 2},
                         "tensor_parallel": TP, **over})


def test_ties_names_every_use_of_one_tensor():
    assert ties(tied_gpt()) == [["tok.weight", "head.weight"]]
    assert ties(gpt.model(n_layer=2)) == []


def test_rules_that_split_the_uses_differently_are_refused():
    for rules, said in ((TP[:-1], "head.weight whole (no rule)"),
                        (TP[:-1] + [{"module": "head", "style": "rowwise"}],
                         "head.weight shard(1) (rowwise)")):
        with pytest.raises(PlanError) as err:
            wp.check(_plan(tensor_parallel=rules), tied_gpt(), 2)
        msg = str(err.value)
        assert "tok.weight and head.weight are one tensor" in msg and said in msg, msg
    wp.check(_plan(), tied_gpt(), 2)  # row-wise embedding, column-wise head: both Shard(0)
    wp.check(_plan(tensor_parallel=TP[:-1]), gpt.model(n_layer=2), 2)  # untied: any rules


def test_retie_points_every_use_at_the_first():
    m = tied_gpt()
    groups = ties(m)
    m.head.weight = torch.nn.Parameter(m.tok.weight.detach().clone())  # as a style would
    retie(m, groups, held={"head.weight"})  # a rank holding one use: nothing to do
    assert m.head.weight is not m.tok.weight
    retie(m, groups)
    assert m.head.weight is m.tok.weight
    m.head.weight = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(PlanError, match="came out of the rules as different tensors"):
        retie(m, groups)


@pytest.mark.parametrize("schedule,refused", [("torch:ZBVZeroBubble", True),
                                              ("torch:InterleavedZeroBubble", False),
                                              ("interleaved", False)])
def test_zero_bubble_with_both_uses_on_one_rank_is_refused(schedule, refused):
    """A V schedule puts stages 0 and 3 (the embedding and the head) on pp rank 0; its
    split backward lost one use's gradient (every parameter off after 3 steps), so it is
    refused; stages on different ranks (interleaved: 0 and 3 on ranks 0 and 1) train."""
    m = tied_gpt()
    plan = wp.check(_plan(mesh={"pp": 2, "tp": 2},
                          pipeline={"split": ["blocks.0", "blocks.1", "ln_f"],
                                    "schedule": schedule, "stages_per_rank": 2,
                                    "microbatches": 4}), m, 4)
    stages = split_model(m, plan.pipeline.split)
    names = [{n for n, _ in st.named_parameters(remove_duplicate=False)} for st in stages]
    rank_of = lambda s: stage_rank(s, 2, schedule)
    if refused:
        with pytest.raises(PlanError, match="stages 0 and 3, both on pp rank 0"):
            check_schedule(plan, ties(m), names, rank_of)
    else:
        check_schedule(plan, ties(m), names, rank_of)


def test_fully_shard_units_of_one_tied_tensor_are_sharded_together():
    """FSDP2 refuses a parameter in two groups (torch's ValueError, in the ranks): units
    holding uses of one tied tensor become one fully_shard call; a use outside every unit
    (the root would hold the tensor too) is a plan error before any traffic."""
    def units(mods):
        return shard_units(wp.from_dict({"format": "weft.plan/1", "name": "f",
                                         "mesh": {"dp_shard": 2},
                                         "data_parallel": {"shard_modules": mods}}), tied_gpt())
    assert units(["tok", "blocks.*", "head"]) == [["blocks.0"], ["blocks.1"], ["tok", "head"]]
    assert units(["blocks.*"]) == [["blocks.0"], ["blocks.1"]]  # both uses in the root
    for mods in (["tok", "blocks.*"], ["head"]):
        with pytest.raises(PlanError, match="fully_shard would get it twice"):
            units(mods)
    with pytest.raises(PlanError, match="in no unit"):  # the plan check says it first
        wp.check(wp.from_dict({"format": "weft.plan/1", "name": "f", "mesh": {"dp_shard": 2},
                               "data_parallel": {"shard_modules": ["head"]}}), tied_gpt(), 2)
