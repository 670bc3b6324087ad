"""An ordinary PyTorch model, written with no knowledge of weft.

    weft plan pipeline --model examples/mlp_digits.py --topology multi_node:2x2 --workers 4
"""

import torch
from torch import nn


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, 10),
    )


def example_input(batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, 64)


loss_fn = nn.functional.cross_entropy


def dataset():
    from weft.demo.data import digits

    return digits(flat=True)
