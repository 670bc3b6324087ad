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
from weft.parallel.split import rebuild_output, split_model, stage_holder

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


def test_an_example_function_is_not_called_where_torch_fx_traces():
    def never():
        raise AssertionError("the example was made for a model torch.fx traces")
    assert len(split_model(gpt.model(n_layer=2), ["blocks.1"], example=never)) == 2


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


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, h, mask, residual=False, pos=None):
        mixed = mask.float() @ h / mask.shape[0]  # each position sees those before it
        y = torch.tanh(self.lin(mixed)) * pos[0] + pos[1]
        return h + y if residual else y


class Rotary(nn.Module):
    """Returns a tuple that every block takes (as Llama's rotary embedding does)."""

    def forward(self, h):
        t = torch.arange(h.shape[1], dtype=h.dtype)[:, None]
        return torch.cos(t / 4), torch.sin(t / 4)


class Shapey(nn.Module):
    """A forward torch.fx cannot trace (a branch on a shape, as Hugging Face models take),
    a parameter of its own used above the cuts, and a constant keyword (residual=True)."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(16, 8), nn.Linear(8, 16)
        self.blocks = nn.ModuleList([Block() for _ in range(3)])
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))
        self.rot = Rotary()

    def forward(self, x):
        b, t = x.shape
        mask = torch.ones(t, t).tril() if t > 1 else torch.ones(1, 1)
        h = self.emb(x) * self.scale
        pos = self.rot(h)
        for blk in self.blocks:
            h = blk(h, mask.bool(), residual=True, pos=pos)
        return self.head(h)


def test_a_forward_fx_cannot_trace_is_captured_by_torch_export():
    torch.manual_seed(0)
    m = Shapey()
    with pytest.raises(PlanError, match="example input"):
        split_model(m, ["blocks.1"])
    state = torch.get_rng_state()
    stages = split_model(m, ["blocks.1", "blocks.2"], example=lambda: torch.randint(0, 16, (2, 5)))
    assert torch.equal(torch.get_rng_state(), state)  # making the example drew nothing of ours
    for b in (2, 3, 1):  # the batch stays symbolic; the sequence length is the example's
        x = torch.randint(0, 16, (b, 5))
        assert torch.allclose(_chain(stages, x), m(x), atol=1e-6)
    own = {id(p): n for n, p in m.named_parameters()}
    names = [n for st_ in stages for n, p in st_.named_parameters() if own[id(p)] == n]
    assert sorted(names) == sorted(own.values())  # the model's own objects and names
    for cut, st_ in zip(["blocks.1", "blocks.2"], stages[1:]):
        assert st_.get_submodule(cut) is m.get_submodule(cut)
    mid = stages[0](torch.randint(0, 16, (2, 5)))
    # what crosses a cut is tensors (h and rot's two), not pytrees or tuples; the mask,
    # made from constants alone (the sequence length is the example's), is made again
    assert len(mid) == 3 and all(torch.is_tensor(v) for v in mid)
    # residual=True reached the blocks (torch.export's swap alone passes None)
    calls = [nd for st_ in stages for nd in st_.graph.nodes if nd.op == "call_module"
             and nd.target.startswith("blocks.")]
    assert calls and all(nd.kwargs.get("residual") is True for nd in calls)


class Structured(Shapey):
    """Returns a dict, as Hugging Face models return a ModelOutput."""

    def forward(self, x):
        return {"logits": super().forward(x), "scale": 2, "bad": x.shape[0] > 0 if self.bad
                else None}


def test_a_structured_output_leaves_the_last_stage_as_tensors_with_its_spec():
    m = Structured()
    m.bad = True  # a value computed from the batch's size: not a tensor, so not sent
    with pytest.raises(PlanError, match="output holds a SymBool computed in forward"):
        split_model(m, ["blocks.1"], example=torch.randint(0, 16, (2, 5)))
    m.bad = False
    stages = split_model(m, ["blocks.1"], example=torch.randint(0, 16, (2, 5)))
    x = torch.randint(0, 16, (3, 5))
    out = _chain(stages, x)
    assert isinstance(out, tuple) and all(torch.is_tensor(t) for t in out)
    back = rebuild_output(stages[-1].output_spec, out)
    assert torch.allclose(back["logits"], m(x)["logits"], atol=1e-6)
    assert back["scale"] == 2 and back["bad"] is None
    assert stages[0].output_spec is None
