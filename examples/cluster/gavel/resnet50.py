"""Gavel's "ResNet-50 (batch size B)" job: ResNet-50 on ImageNet (224x224 crops, 1000 classes)
as Gavel trains it (workloads/pytorch/image_classification/imagenet of
stanford-futuredata/gavel at c4fa400: torchvision's `resnet50`, cross-entropy, SGD lr 0.1,
momentum 0.9, weight decay 1e-4). torchvision does not import with this torch, so the same
architecture is written here: 7x7/2 stem with max-pool, Bottleneck blocks [3, 4, 6, 3] with the
stride on the 3x3 convolution, in-place ReLUs, global average pool. Synthetic inputs.

    weft profile memory examples/cluster/gavel/resnet50.py --batch 16
"""

import torch
import torch.nn.functional as F
from torch import nn


def _bn(c):
    return nn.BatchNorm2d(c)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), _bn(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), _bn(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        y += x if self.down is None else self.down(x)
        return self.relu(y)


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), _bn(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(n):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = 4 * width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x):
        y = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


model = ResNet50
loss_fn = F.cross_entropy


def example_batch(batch_size: int):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch_size, 3, 224, 224, generator=g),
            torch.randint(0, 1000, (batch_size,), generator=g))


def optimizer(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
