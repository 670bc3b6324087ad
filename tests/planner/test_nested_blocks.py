"""A model whose blocks sit below the root (a Hugging Face model's `transformer.h` or
`model.layers`) is profiled block by block, and every layer boundary the profile offers is
a cut `weft.parallelize` can make."""

import torch
from torch import nn

from weft.parallel.split import split_model
from weft.planner.profile_units import profile_workload, unit_modules


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(16, 16), nn.Tanh())
                                     for _ in range(4)])
        self.norm = nn.LayerNorm(16)
        self.extra = nn.ModuleList([nn.Linear(16, 16)])  # a smaller container: not expanded

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = h + layer(h)
        return self.norm(self.extra[0](h))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.model, self.head = Body(), nn.Linear(16, 32)

    def forward(self, x):
        return self.head(self.model(x))


def test_the_largest_container_is_expanded_at_any_depth():
    big, units = unit_modules(Nested())
    assert big == "model.layers"
    names = [n for n, _ in units]
    assert sorted(names) == sorted(["head", "model.embed", "model.norm", "model.extra"] +
                                   [f"model.layers.{i}" for i in range(4)])


def test_every_layer_boundary_of_the_profile_is_a_cut():
    torch.manual_seed(0)
    m = Nested()
    wl = profile_workload(m, lambda b: torch.randint(0, 32, (b, 5)), micro_batch=2, repeats=1)
    cuts = [l.split_at for l in wl.layers[1:]]
    # the units before the blocks are one layer; the rest one more, cut at the first called
    assert cuts == [f"model.layers.{i}" for i in range(4)] + ["model.norm"]
    stages = split_model(m, cuts)
    x = torch.randint(0, 32, (3, 5))
    out = x
    for st in stages:
        out = st(*out) if isinstance(out, tuple) else st(out)
    assert torch.allclose(out, m(x))


def test_a_model_that_fails_on_its_example_is_a_plan_error():
    import pytest

    from weft.errors import PlanError

    with pytest.raises(PlanError, match=r"profiling Nested: .*example input of 2 fail: .*IndexError"):
        profile_workload(Nested(), lambda b: torch.randint(100, 200, (b, 5)), micro_batch=2,
                         repeats=1)
