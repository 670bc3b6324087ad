"""Gavel's "CycleGAN" job: CycleGAN on monet2photo (256x256, batch 1) as Gavel trains it
(workloads/pytorch/cyclegan of stanford-futuredata/gavel at c4fa400, cyclegan.py and models.py:
two ResNet generators with 9 residual blocks (7x7 stem of 64 channels, two stride-2
convolutions to 256, reflection padding, instance norm, nearest upsampling back), two PatchGAN
discriminators (4x4/2 convolutions of 64-512 channels, instance norm, LeakyReLU 0.2), MSE GAN
loss, L1 cycle (x10) and identity (x5) losses, Adam lr 2e-4, betas (0.5, 0.999)).

Gavel steps the generators, then each discriminator, with three Adam optimizers; here one
forward returns the generators' loss plus both discriminators' losses on the detached fakes
(no replay buffer) and one Adam steps all four networks: the same parameters, gradients and
optimizer state, with the discriminators' activations alive alongside the generators' (a
little more than Gavel's sequence holds at once). Inputs (batch, 2, 3, 256, 256) pack an image
of each domain.
"""

import torch
import torch.nn.functional as F
from torch import nn

SIZE, RES_BLOCKS = 256, 9


def _conv_norm_relu(cin, cout, k, stride=1, pad=0, reflect=False):
    layers = [nn.ReflectionPad2d(pad)] if reflect and pad else []
    layers += [nn.Conv2d(cin, cout, k, stride, 0 if reflect else pad), nn.InstanceNorm2d(cout),
               nn.ReLU(inplace=True)]
    return layers


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(*_conv_norm_relu(c, c, 3, pad=1, reflect=True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


def generator():
    layers = _conv_norm_relu(3, 64, 7, pad=3, reflect=True)
    layers += _conv_norm_relu(64, 128, 3, 2, 1) + _conv_norm_relu(128, 256, 3, 2, 1)
    layers += [Residual(256) for _ in range(RES_BLOCKS)]
    for cin, cout in ((256, 128), (128, 64)):
        layers += [nn.Upsample(scale_factor=2)] + _conv_norm_relu(cin, cout, 3, 1, 1)
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(64, 3, 7), nn.Tanh()]
    return nn.Sequential(*layers)


def discriminator():
    layers, cin = [], 3
    for cout in (64, 128, 256, 512):
        layers.append(nn.Conv2d(cin, cout, 4, 2, 1))
        if cout != 64:
            layers.append(nn.InstanceNorm2d(cout))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        cin = cout
    layers += [nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(512, 1, 4, padding=1)]
    return nn.Sequential(*layers)


class CycleGAN(nn.Module):
    def __init__(self):
        super().__init__()
        self.g_ab, self.g_ba = generator(), generator()
        self.d_a, self.d_b = discriminator(), discriminator()

    def forward(self, pair):
        a, b = pair[:, 0], pair[:, 1]
        ident = (F.l1_loss(self.g_ba(a), a) + F.l1_loss(self.g_ab(b), b)) / 2
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        pb, pa = self.d_b(fake_b), self.d_a(fake_a)
        gan = (F.mse_loss(pb, torch.ones_like(pb)) + F.mse_loss(pa, torch.ones_like(pa))) / 2
        cycle = (F.l1_loss(self.g_ba(fake_b), a) + F.l1_loss(self.g_ab(fake_a), b)) / 2
        loss_g = gan + 10.0 * cycle + 5.0 * ident
        loss_d = 0.0
        for d, real, fake in ((self.d_a, a, fake_a), (self.d_b, b, fake_b)):
            pr, pf = d(real), d(fake.detach())
            loss_d = loss_d + (F.mse_loss(pr, torch.ones_like(pr))
                               + F.mse_loss(pf, torch.zeros_like(pf))) / 2
        return loss_g + loss_d


model = CycleGAN


def example_input(batch_size: int):
    return torch.rand(batch_size, 2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1


def optimizer(params):
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))
