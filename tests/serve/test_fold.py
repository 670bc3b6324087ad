"""Serving folds batch norms into convolutions where that keeps the answers (weft.serve.fold)."""

import torch
import torch.nn as nn

from weft.serve import Bundle, Ensemble
from weft.serve.fold import for_inference
from weft.serve.testbed import digits_resnet


class Branchy(nn.Module):
    """A forward whose control flow depends on the data: not traceable by fx."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


def _bns(m):
    return sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())


def test_a_resnet_is_served_with_its_batch_norms_folded_and_the_same_answers():
    torch.manual_seed(0)
    model = digits_resnet(width=8)
    for mod in model.modules():  # batch-norm statistics that are not the identity
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    model.eval()
    folded, why = for_inference(model, (1, 8, 8))
    assert why is None and _bns(model) > 0 and _bns(folded) == 0
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    bundle = Bundle.from_model(model, (1, 8, 8))
    eager = Ensemble(bundle, fold=False).predict_scores(x)
    served = Ensemble(bundle)
    assert served.not_folded == {}
    torch.testing.assert_close(served.predict_scores(x), eager, rtol=1e-4, atol=1e-5)


def test_an_untraceable_model_is_served_as_it_is_with_the_reason():
    torch.manual_seed(0)
    model = Branchy().eval()
    served, why = for_inference(model, (1, 6, 6))
    assert served is model and "not traceable" in why


def test_serve_run_folds_unless_eager(tiny_bundle):
    """`weft serve run` folds by default; --eager serves the saved modules."""
    import argparse

    from weft.serve.cli import _predictor

    base = dict(source=str(tiny_bundle.path), input_shape=None, workers=1, threads=1,
                in_process=True)
    for eager in (False, True):
        pred = _predictor(argparse.Namespace(**base, eager=eager))
        with pred:
            m = pred.bundle.members[0]
            served = getattr(m, "_served", None)
            assert (served is None) == eager
            if not eager:
                assert pred.not_folded == {} and not any(
                    isinstance(x, nn.BatchNorm2d) for x in served.modules())
