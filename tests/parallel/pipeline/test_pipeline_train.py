"""`weft train --plan`'s data: a spec without dataset() gets the default, resolved by name."""

import torch

from weft.parallel.pipeline import train


def test_default_dataset_is_flat_digits():
    tr, te = train.default_dataset()
    x, y = tr[:]
    assert x.shape == (1437, 64) and x.dtype == torch.float32 and len(te) == 360
    assert sorted(set(y.tolist())) == list(range(10))


def test_spec_without_dataset_is_evaluated_on_the_default(tmp_path):
    spec = tmp_path / "bare.py"
    spec.write_text("import torch\n\n\ndef model():\n    torch.manual_seed(0)\n"
                    "    return torch.nn.Sequential(torch.nn.Linear(64, 10))\n")
    w = torch.zeros(10, 64)
    b = torch.arange(10, dtype=torch.float32)  # always predicts class 9
    acc = train.evaluate(str(spec), [{0: {"weight": w.numpy(), "bias": b.numpy()}}])
    _, te = train.default_dataset()
    assert acc == (te[:][1] == 9).float().mean().item()
