"""A small ResNet (torchvision's BasicBlock design: in-place ReLUs, batch norm, ``out +=
identity``) for the 8x8 handwritten digits. Plain PyTorch, no parallel code inside.

    weft plan pipeline --model examples/resnet.py --topology multi_node:2x2 --stages 4 \\
        --micro-batch 16 --microbatches 4 --out plan.json
    weft train --plan plan.json --epochs 3

The model-spec contract: `model(**config)` builds the network (seeded, so every rank builds
the same weights), `dataset()` returns (train, test), `loss_fn`, `example_input(batch)`.
Its blocks (`layer1.0`, `layer1.1`, `layer2.0`, ...: the children of the stage
`nn.Sequential`s) are where a pipeline may cut besides the stem's and the head's ops.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CONFIG = {"width": 8, "blocks": (2, 2, 2), "classes": 10, "in_channels": 1}


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
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, width: int, blocks: tuple[int, ...], classes: int, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout,
                                                     2 if b == 0 and i > 0 else 1)
                                          for b in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = (stages + [nn.Identity()] * 3)[:3]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def model(seed: int = 0, **config) -> ResNet:
    """A ResNet with CONFIG overridden by `config`; the same seed builds the same weights."""
    unknown = set(config) - set(CONFIG)
    if unknown:
        raise TypeError(f"unknown ResNet config key(s) {sorted(unknown)}; known: {sorted(CONFIG)}")
    torch.manual_seed(seed)
    return ResNet(**{**CONFIG, **config})


loss_fn = F.cross_entropy


def example_input(batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, CONFIG["in_channels"], 8, 8)


def dataset():
    """scikit-learn's digits as (1, 8, 8) images (no download)."""
    from weft.demo.data import digits

    return digits()
