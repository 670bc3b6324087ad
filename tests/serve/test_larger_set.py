"""The larger set: a ResNet-style CNN on augmented digits upsampled to 32x32 (weft.serve.testbed),
decomposed into 2 subnets of a quarter of its FLOPs each, keeps its held-out accuracy.

76-83 s on the shared 2-core machine at load 3-5, so marked slow: width 16, 4 training epochs,
150 fine-tuning steps. With the library's old decomposition (one-shot removal, lr 1e-3,
distillation 0.5) the same check with width 24 failed by 5.7 points (95.1% -> 89.4%); see
docs/serve.md for the per-stage measurements.
"""

import pytest
import torch

from weft.serve import DecomposeConfig, Ensemble, decompose, evaluate
from weft.serve import testbed as tb


@pytest.mark.slow
def test_decomposed_resnet_within_one_point_of_the_original():
    torch.set_num_threads(1)
    train, test = tb.digits32(copies=2, test_copies=2)
    torch.manual_seed(0)
    model = tb.train(tb.resnet(10, width=16, blocks=(1, 1, 1)), train, epochs=4)
    bundle = decompose(model, train, test, DecomposeConfig(groups=2, keep=0.5, steps=150))
    x, y = test.tensors
    original, ensemble = tb.accuracy(model, test), evaluate(Ensemble(bundle), x, y)
    assert original > 0.9, original  # a harder set than 8x8 digits, still learnt
    assert ensemble >= original - 0.01, (original, ensemble)
    assert all(m.info["flops"] < 0.35 * bundle.provenance["original"]["flops"] for m in bundle.members)
