"""`as_sequential`: an nn.Module cut into a chain of one-tensor layers (torch.fx, torch.export).
The models here are also used by tests/planner/test_profile.py and test_pipeline_sync.py."""

import pytest
import torch
import torch.nn as nn

from weft.errors import PlanError
from weft.parallel.pipeline.layers import as_sequential


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h + self.b(h)
        return self.c(h)


class Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.act, self.branch = nn.ReLU(), Branchy()

    def forward(self, x):
        return self.branch(self.act(x))


class Untraceable(nn.Module):
    """The data-dependent branch sits in an ordinary submodule (not a block): traced through."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.body = Body()

    def forward(self, x):
        return self.body(self.stem(x))


class BranchInBlock(nn.Module):
    """The same branch inside a block (a child of an nn.Sequential): a leaf of the trace."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(8, 8)
        self.body = nn.Sequential(nn.ReLU(), Branchy())

    def forward(self, x):
        return self.body(self.stem(x))


def test_traced_model_is_cut_only_at_single_tensor_boundaries():
    torch.manual_seed(0)
    model = Residual()
    seq = as_sequential(model)
    x = torch.randn(5, 8)
    assert torch.allclose(seq(x), model(x))
    # the residual add keeps b and the add in one layer; a, relu and c are separate
    assert len(seq) == 4
    for layer in seq:  # each piece runs alone on one tensor
        x = layer(x)


def test_untraceable_model_names_failing_module_and_split_points():
    with pytest.raises(PlanError) as err:
        as_sequential(Untraceable())
    msg = str(err.value)
    assert "'body.branch'" in msg and "Branchy" in msg
    assert "split points: stem, body" in msg


def test_block_with_data_dependent_branch_runs_as_itself():
    model = BranchInBlock()
    seq = as_sequential(model)
    assert [n for n, _ in seq.named_children()] == ["stem", "body_0", "body_1"]
    assert seq[2].get_submodule("body.1") is model.body[1]  # the model's own block object
    for sign in (1.0, -1.0):  # both branches, decided at run time
        x = sign * torch.randn(4, 8).abs()
        assert torch.equal(seq(x), model(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return h + self.b(h)


class ShapeBranch(nn.Module):
    """torch.fx rejects the shape test (a Proxy in control flow); torch.export specialises it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        if x.shape[-1] == 4:
            x = self.stem(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.view(x.size(0), -1))


def test_export_path_cuts_untraceable_model_at_its_blocks():
    import torch.fx as fx

    model = ShapeBranch()
    with pytest.raises(fx.proxy.TraceError):
        fx.symbolic_trace(model)
    with pytest.raises(PlanError, match="pass an example input to try torch.export"):
        as_sequential(model)
    seq = as_sequential(model, torch.randn(5, 4))
    assert [n for n, _ in seq.named_children()] == ["stem", "blocks_0", "blocks_1", "view", "head"]
    assert sum(p.numel() for p in seq.parameters()) == sum(p.numel() for p in model.parameters())
    x = torch.randn(7, 4)  # another batch size: the batch dimension stays dynamic
    assert torch.allclose(seq(x), model(x), atol=1e-6)
    # each piece runs alone on one tensor, and gradients reach every parameter
    h = x
    for layer in seq:
        h = layer(h)
    h.sum().backward()
    assert all(p.grad is not None for p in seq.parameters())


def test_export_forced_on_traceable_model_and_bad_method():
    model = Residual()
    x = torch.randn(3, 8)
    seq = as_sequential(model, x, method="export")
    assert torch.allclose(seq(x), model(x), atol=1e-6)
    with pytest.raises(PlanError, match="trace method must be one of"):
        as_sequential(model, x, method="jit")


def test_neither_fx_nor_export_names_failing_module():
    with pytest.raises(PlanError) as err:
        as_sequential(Untraceable(), torch.randn(2, 8))
    msg = str(err.value)
    assert "torch.fx" in msg and "torch.export" in msg
    assert "module 'body.branch' (Branchy)" in msg
    assert "split points: stem, body" in msg
