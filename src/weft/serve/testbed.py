"""Ordinary data and models that exercise decomposition (used by tests, the benchmark, examples).

Nothing here is weft-specific and nothing is downloaded: `digits32` is scikit-learn's bundled
8x8 digits upsampled to 32x32 and augmented (rotation, scale, shift, stroke width, noise), a
harder set than the 8x8 originals; `resnet` is a ResNet-style CNN (in-place ReLU, batch norm,
residual blocks with 1x1 projection shortcuts); `train` is a plain training loop.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset


def digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """sklearn's digits as (1, 8, 8) images in [0, 1]; a stratified split fixed by `seed`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (TensorDataset(torch.from_numpy(xtr), torch.from_numpy(ytr)),
            TensorDataset(torch.from_numpy(xte), torch.from_numpy(yte)))


def _augment(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    n = len(x)
    up = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = u(-0.3, 0.3)
    scale = u(0.8, 1.1)
    shear = u(-0.2, 0.2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, u(-0.15, 0.15)], 1),
                         torch.stack([sin, cos, u(-0.15, 0.15)], 1)], 1)
    grid = F.affine_grid(theta, list(up.shape), align_corners=False)
    out = F.grid_sample(up, grid, align_corners=False, padding_mode="zeros")
    thick = torch.rand(n, generator=gen) < 0.4
    if thick.any():  # thicker strokes for some
        out[thick] = F.max_pool2d(out[thick], 3, stride=1, padding=1)
    contrast = u(0.6, 1.0)[:, None, None, None]
    noise = 0.15 * torch.randn(out.shape, generator=gen)
    blobs = F.interpolate(torch.rand(n, 1, 4, 4, generator=gen), size=(size, size), mode="bilinear",
                          align_corners=False)
    return (out * contrast + 0.2 * blobs + noise).clamp(0, 1.5)


def digits32(copies: int = 4, test_copies: int = 2, size: int = 32, test_fraction: float = 0.2,
             seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Augmented (1, size, size) digits: `copies` per training image, `test_copies` per test image.

    Test images come only from the held-out originals (a different augmentation stream), so no
    test digit is seen in training.
    """
    train, test = digits(test_fraction, seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for ds, k in ((train, copies), (test, test_copies)):
        x, y = ds.tensors
        xs = torch.cat([_augment(x, size, gen) for _ in range(k)])
        out.append(TensorDataset(xs.contiguous(), y.repeat(k)))
    return out[0], out[1]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return torch.relu(out)


class ResNet(nn.Module):
    """Stem conv, stages of BasicBlocks (width doubling, stride 2 after the first), then either
    global average pooling + linear, or (`hidden`) flatten of the last feature map + MLP head."""

    def __init__(self, num_classes: int = 10, width: int = 16, blocks=(2, 2, 2), in_channels: int = 1,
                 hidden: int = 0, feature_size: int = 0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        if hidden:
            self.pool = nn.Identity()
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * feature_size ** 2, hidden),
                                      nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Linear(hidden, num_classes))
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.pool(self.layers(self.stem(x))))


def resnet(num_classes: int = 10, width: int = 16, blocks=(2, 2, 2), in_channels: int = 1) -> ResNet:
    """ResNet-style CNN with global average pooling (for 32x32 inputs)."""
    return ResNet(num_classes, width, blocks, in_channels)


def digits_resnet(num_classes: int = 10, width: int = 16) -> ResNet:
    """A small residual CNN for 8x8 digits: one block per stage, flatten of the 4x4 map, MLP head."""
    return ResNet(num_classes, width, (1, 1), 1, hidden=64, feature_size=4)


def train(model: nn.Module, data: TensorDataset, epochs: int = 5, batch_size: int = 64, lr: float = 3e-3,
          seed: int = 0) -> nn.Module:
    """Adam with cosine decay on cross-entropy; returns the model in eval mode."""
    torch.manual_seed(seed)
    x, y = data.tensors
    steps = epochs * math.ceil(len(x) / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            b = perm[i:i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.inference_mode()
def accuracy(model: nn.Module, data: TensorDataset, batch_size: int = 512) -> float:
    model.eval()
    x, y = data.tensors
    hits = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
               for i in range(0, len(x), batch_size))
    return hits / len(x)
