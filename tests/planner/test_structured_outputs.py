"""Models whose forward returns a structure of tensors (a dict, as Hugging Face's ModelOutput
is) are profiled and timed like models returning a tensor: every output tensor that
requires grad gets a gradient of ones."""

import pytest
import torch
from torch import nn

from weft.errors import PlanError
from weft.planner.contention import stage_pass
from weft.planner.profile import backward_ones
from weft.planner.profile_units import profile_workload


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return {"logits": self.b(h), "hidden": (h, x.shape[0])}


def test_backward_ones_reaches_every_output_tensor():
    torch.manual_seed(0)
    m, x = DictOut(), torch.randn(4, 6)
    backward_ones(m(x))
    got = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    out = m(x)  # the same by hand: ones into logits and into hidden
    torch.autograd.backward([out["logits"], out["hidden"][0]],
                            [torch.ones(4, 3), torch.ones(4, 8)])
    for g, p in zip(got, m.parameters()):
        assert torch.allclose(g, p.grad)
    with pytest.raises(PlanError, match="holds no tensor that requires grad"):
        backward_ones({"n": 3, "t": torch.ones(2)}, "M")


def test_a_dict_output_model_is_profiled_and_timed_whole():
    m = DictOut()
    wl = profile_workload(m, lambda b: torch.randn(b, 6), micro_batch=4, repeats=1)
    assert len(wl.layers) >= 1 and all(l.forward.rep >= 0 for l in wl.layers)
    run = stage_pass(m, torch.randn(4, 6))   # the whole model, called as it is
    m.zero_grad()
    run()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
