"""Block-granularity layers: blocks found and kept whole, split points by module name,
stages holding the model's own modules, values recomputed per layer, structured outputs,
shared parameters and in-place inputs."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from weft.errors import PlanError
from weft.model_spec import load_model
from weft.parallel.pipeline.layers import (as_sequential, find_blocks, layer_modules,
                                           mutates_input, shared_parameters, split_bounds,
                                           split_by_names)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def gpt(n_layer=4, tied=False):
    model = load_model(f"{EXAMPLES / 'gpt.py'}:model")  # default config, 2 blocks
    if n_layer != 2:
        import importlib

        mod = importlib.import_module(type(model).__module__)
        model = mod.model(n_layer=n_layer, d_model=16, n_head=2, block=8)
    if tied:
        model.head.weight = model.tok.weight
    return model


def tokens(b=3, t=8):
    return torch.randint(0, 128, (b, t), generator=torch.Generator().manual_seed(0))


def test_transformer_offers_a_cut_before_every_block():
    model = gpt(n_layer=6)
    assert find_blocks(model) == [f"blocks.{i}" for i in range(6)]
    seq = as_sequential(model)
    names = [n for n, _ in seq.named_children()]
    assert names == ["tok"] + [f"blocks_{i}" for i in range(6)] + ["ln_f", "head"]
    assert layer_modules(seq)[3] == ["blocks.2"]
    x = tokens()
    assert torch.equal(seq(x), model(x))


def test_resnet_blocks_and_in_place_stem():
    model = load_model(f"{EXAMPLES / 'resnet.py'}:model")
    assert find_blocks(model)[:3] == ["layer1.0", "layer1.1", "layer2.0"]
    assert "layer2.0.downsample.0" not in find_blocks(model)  # a block is a unit
    seq = as_sequential(model)
    names = [n for n, _ in seq.named_children()]
    assert names[:5] == ["conv1", "bn1", "relu", "layer1_0", "layer1_1"]
    h = torch.randn(2, 16, 8, 8)
    assert mutates_input(seq[2], h) and not mutates_input(seq[0], torch.randn(2, 1, 8, 8))
    assert torch.equal(h, h.clone())  # the probe ran on a copy


def test_split_points_give_stages_of_the_models_own_modules():
    model = gpt(n_layer=4)
    seq = as_sequential(model)
    assert split_bounds(seq, ["blocks.1", "blocks.3"]) == [(0, 2), (2, 4), (4, 7)]
    stages = split_by_names(model, ["blocks.1", "blocks.3"])
    assert stages[1].get_submodule("blocks.1") is model.blocks[1]
    assert set(stages[1].state_dict()) == {k for k in model.state_dict()
                                           if k.startswith(("blocks.1.", "blocks.2."))}
    x = tokens()
    h = x
    for st in stages:
        h = st(h)
    assert torch.equal(h, model(x))
    # a block's forward reads its attributes when it runs (what tensor parallelism changes)
    model.blocks[1].attn.n_head, model.blocks[1].attn.head_dim = 1, 16
    h2 = x
    for st in stages:
        h2 = st(h2)
    assert torch.equal(h2, model(x)) and not torch.allclose(h2, h)


def test_split_point_errors_name_the_problem():
    seq = as_sequential(gpt(n_layer=4))
    with pytest.raises(PlanError, match="'blocks.9' names no module.*blocks.0"):
        split_bounds(seq, ["blocks.9"])
    with pytest.raises(PlanError, match="in model order"):
        split_bounds(seq, ["blocks.2", "blocks.1"])
    with pytest.raises(PlanError, match="first layer"):
        split_bounds(seq, ["tok"])


class MaskedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x, mask):
        return x + self.lin(x).masked_fill(mask, 0.0)


class MaskEverywhere(nn.Module):
    """A causal mask built from the input's length once, then passed to every block."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Linear(1, 8)
        self.blocks = nn.ModuleList(MaskedBlock() for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        t = x.shape[1]
        mask = torch.arange(t)[:, None] < torch.arange(8)
        h = self.emb(x.unsqueeze(-1))
        for blk in self.blocks:
            h = blk(h, mask)
        return self.head(h)


def test_values_without_data_are_recomputed_instead_of_pinning_blocks_together():
    model, x = MaskEverywhere(), torch.randn(4, 8)
    fx_seq = as_sequential(model, method="fx")  # the length read off the input is live
    assert len(fx_seq) < 5
    seq = as_sequential(model, x)  # auto: export, the mask recomputed by each block
    names = [n for n, _ in seq.named_children()]
    assert names[-5:] == ["emb", "blocks_0", "blocks_1", "blocks_2", "head"]
    y = torch.randn(6, 8)
    assert torch.allclose(seq(y), model(y), atol=1e-6)


class Structured(nn.Module):
    def __init__(self, n_out=2):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.n_out = n_out

    def forward(self, x):
        h = self.a(x)
        return {"logits": h, "aux": h.sum(1)} if self.n_out == 2 else (h,)


def test_structured_outputs_are_reduced_or_refused_with_the_option_to_set():
    x = torch.randn(3, 4)
    single = Structured(1)
    assert torch.equal(as_sequential(single)(x), single(x)[0])
    both = Structured(2)
    with pytest.raises(PlanError, match="2 tensors \\(logits, aux\\).*output='logits'"):
        as_sequential(both)
    assert torch.equal(as_sequential(both, output="logits")(x), both(x)["logits"])
    with pytest.raises(PlanError, match="no such field"):
        as_sequential(both, output="nope")


def test_shared_parameters_are_found_across_layers():
    model = gpt(n_layer=2, tied=True)
    seq = as_sequential(model)
    (e,) = shared_parameters(seq)
    assert e["names"] == ["tok.weight", "head.weight"] and e["layers"] == [0, len(seq) - 1]
    assert e["param"] is model.tok.weight and e["bytes"] == model.tok.weight.numel() * 4
    assert shared_parameters(as_sequential(gpt(n_layer=2))) == []
