"""Small ordinary models used by the demo, tests and examples (nothing weft-specific)."""

from __future__ import annotations

from torch import nn


def digits_cnn(width: int = 16) -> nn.Sequential:
    """A small CNN for 8x8 digit images: ~20k parameters."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def digits_mlp(hidden: int = 128, depth: int = 2) -> nn.Sequential:
    """An MLP on flattened 8x8 digits (64 inputs, 10 classes)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)
