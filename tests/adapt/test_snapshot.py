"""The per-step snapshot's copy (weft.adapt.snapshot.copy_state) is a deep copy: a module
and optimizer restored from it equal the originals at the time of the copy, whatever
happened to the originals after."""

import copy

import torch
from torch import nn

from weft.adapt.snapshot import copy_state


def test_copy_state_is_a_deep_copy_that_restores_model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    history = [1, 2]
    shared = torch.ones(2)
    state = {"engine": {"model": model.state_dict(), "opt": opt.state_dict()},
             "policy": {"seen": history}, "step": 1, "pair": (shared, shared)}
    want = copy.deepcopy(state)
    snap = copy_state(state)
    # the originals change afterwards (in place: as training does)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    history.append(3)
    shared.add_(1)
    assert snap["policy"] == {"seen": [1, 2]} and snap["step"] == 1
    assert snap["pair"][0] is snap["pair"][1] and torch.equal(snap["pair"][0], torch.ones(2))
    assert snap["engine"]["model"]._metadata == want["engine"]["model"]._metadata
    assert type(snap["engine"]["model"]) is type(want["engine"]["model"])
    restored = copy.deepcopy(model)
    restored.load_state_dict(snap["engine"]["model"])
    ropt = torch.optim.Adam(restored.parameters(), lr=0.1)
    ropt.load_state_dict(snap["engine"]["opt"])
    for k, v in want["engine"]["model"].items():
        assert torch.equal(restored.state_dict()[k], v), k
    for i, st in want["engine"]["opt"]["state"].items():
        for name, v in st.items():
            assert torch.equal(ropt.state_dict()["state"][i][name], v), (i, name)
