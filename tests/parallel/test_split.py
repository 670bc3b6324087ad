"""weft.parallel.split: stages cut at module names hold the model's own submodules, chain to
the model's output, and refuse what cannot be cut (no process group needed)."""

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from weft.errors import PlanError
from weft.parallel.split import split_model, stage_holder

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import gpt

CUTS = ["pos", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "ln_f", "head"]


def _chain(stages, x):
    out = x
    for stage in stages:
        out = stage(*out) if isinstance(out, tuple) else stage(out)
    return out


@settings(max_examples=10, deadline=None)
@given(st.lists(st.sampled_from(CUTS), min_size=1, max_size=4, unique=True))
def test_stages_chain_to_the_model_and_partition_its_parameters(cuts):
    cuts = sorted(cuts, key=CUTS.index)
    model = gpt.model(n_layer=4)
    stages = split_model(model, cuts)
    assert len(stages) == len(cuts) + 1
    x = gpt.example_input(3)
    assert torch.equal(_chain(stages, x), model(x))
    own = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for st_ in stages:  # the model's own parameter objects, under the model's own names
        for n, p in st_.named_parameters():
            assert own[id(p)] == n and id(p) not in seen
            seen[id(p)] = n
    assert len(seen) == len(own)
    # a stage starts with its split module: the module object itself, not a copy
    for cut, st_ in zip(cuts, stages[1:]):
        assert st_.get_submodule(cut) is model.get_submodule(cut)


def test_holder_keeps_the_names_of_several_stages():
    model = gpt.model(n_layer=4)
    stages = split_model(model, ["blocks.1", "blocks.2", "ln_f"])
    held = stage_holder([stages[0], stages[3]])
    names = [n for n, _ in held.named_parameters()]
    assert names[:2] == ["tok.weight", "pos.weight"] and "blocks.0.attn.q.weight" in names
    assert "head.weight" in names and not any(n.startswith("blocks.1.") for n in names)
    assert stage_holder([stages[1]]) is stages[1]


class Skip(nn.Module):
    """A value made in the first stage is used in the last (passed through the middle)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        return self.c(self.b(h)) + h


def test_values_crossing_several_cuts_pass_through():
    m = Skip()
    stages = split_model(m, ["b", "c"])
    x = torch.randn(2, 4)
    assert torch.allclose(_chain(stages, x), m(x))
    mid = stages[1](stages[0](x))
    assert isinstance(mid, tuple) and len(mid) == 2  # h goes on to stage 2 beside b(h)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.mid, self.out = nn.Embedding(8, 4), nn.Linear(4, 4), nn.Linear(4, 8)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(self.mid(self.emb(x)))


def test_a_weight_tied_across_a_cut_is_in_both_stages():
    """Both stages hold the one parameter (weft.parallel.tied keeps ranks' copies equal)."""
    m = Tied()
    first, second = split_model(m, ["mid"])
    assert first.emb.weight is second.out.weight is m.emb.weight


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: torch.fx cannot trace it
            return self.b(self.a(x))
        return self.b(x)


@pytest.mark.parametrize("model,split,message", [
    (gpt.model(), ["blocks"], "pipeline.split[0]: forward never calls 'blocks'"),
    (gpt.model(), ["blocks", "blocks.1"], "pipeline.split[0]: 'blocks' contains another split"),
    (gpt.model(), ["blocks.1", "blocks.0"], "pipeline.split[1]: forward calls 'blocks.0' before"),
    (Branchy(), ["b"], "pipeline.split: cannot cut Branchy at ['b']: torch.fx cannot trace"),
])
def test_what_cannot_be_cut_is_a_plan_error(model, split, message):
    with pytest.raises(PlanError) as err:
        split_model(model, split)
    assert message in str(err.value), str(err.value)
