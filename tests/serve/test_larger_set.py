"""The larger set: a ResNet-style CNN on 32x32 augmented digits, decomposed into 2 subnets."""

import pytest
import torch

from weft.serve import DecomposeConfig, Ensemble, decompose, evaluate
from weft.serve import testbed as tb


@pytest.mark.slow
def test_decomposed_resnet_within_one_point_of_the_original():
    train, test = tb.digits32(copies=2, test_copies=2)
    torch.manual_seed(0)
    model = tb.train(tb.resnet(10, width=24, blocks=(1, 1, 1)), train, epochs=5)
    bundle = decompose(model, train, test, DecomposeConfig(groups=2, keep=0.5, steps=200))
    x, y = test.tensors
    original, ensemble = tb.accuracy(model, test), evaluate(Ensemble(bundle), x, y)
    assert original > 0.9, original  # a harder set than 8x8 digits, still learnt
    assert ensemble >= original - 0.01, (original, ensemble)
    assert all(m.info["flops"] < 0.35 * bundle.provenance["original"]["flops"] for m in bundle.members)
