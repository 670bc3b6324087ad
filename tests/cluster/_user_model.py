"""A user's model spec that weft does not ship: the executor must train it like its own.

A small regression MLP with dropout (randomness inside the model) trained with
Adam (optimizer state that a checkpoint must carry), on synthetic data.
"""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def model():
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))


def dataset():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 6, generator=g)
    y = x @ torch.linspace(-1, 1, 6).unsqueeze(1) + 0.1 * torch.randn(96, 1, generator=g)
    return TensorDataset(x[:80], y[:80]), TensorDataset(x[80:], y[80:])


loss_fn = nn.functional.mse_loss


def optimizer(params):
    return torch.optim.Adam(params, lr=0.01)
