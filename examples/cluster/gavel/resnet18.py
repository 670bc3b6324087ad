"""Gavel's "ResNet-18 (batch size B)" job: ResNet-18 for CIFAR-10 (32x32 inputs, 10 classes) as
Gavel trains it (workloads/pytorch/image_classification/cifar10 of stanford-futuredata/gavel at
c4fa400: the CIFAR variant with a 3x3 stem, no max-pool, BasicBlocks [2, 2, 2, 2] at 64-512
channels, 4x4 average pool, non-in-place ReLUs; cross-entropy; SGD lr 0.1, momentum 0.9, weight
decay 5e-4). Written here from those facts; synthetic inputs of the right shape.

    weft profile memory examples/cluster/gavel/resnet18.py --batch 64
"""

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y)) + self.shortcut(x)
        return F.relu(y)


class CifarResNet18(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(512, classes)

    def forward(self, x):
        y = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.avg_pool2d(y, 4).flatten(1))


model = CifarResNet18
loss_fn = F.cross_entropy


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch_size, 3, 32, 32, generator=g),
            torch.randint(0, 10, (batch_size,), generator=g))


def optimizer(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
