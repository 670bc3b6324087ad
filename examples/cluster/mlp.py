"""A model spec for `weft cluster run` (the same contract as `weft train`):
`model` (a module or a factory), `dataset()` returning (train, test), optional `loss_fn`."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def model():
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def dataset():
    """Four Gaussian blobs in 16 dimensions (fixed seed: the same data in every process)."""
    g = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(4, 16, generator=g)
    y = torch.randint(4, (1200,), generator=g)
    x = centres[y] + torch.randn(1200, 16, generator=g)
    return TensorDataset(x[:1000], y[:1000]), TensorDataset(x[1000:], y[1000:])


loss_fn = nn.functional.cross_entropy
