"""Data-parallel training of an ordinary model. Run: python examples/train_digits.py
or: torchrun --nproc-per-node=2 examples/train_digits.py"""

import torch
import torch.distributed as dist
from torch import nn

import weft.launch
from weft.demo.data import digits
from weft.demo.models import digits_cnn
from weft.parallel import data_parallel, distributed_loader, seed_everything


def main(epochs: int = 8) -> float:
    seed_everything(0)
    train, test = digits()
    loader = distributed_loader(train, batch_size=16)
    model = data_parallel(digits_cnn())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    x, y = test.tensors
    acc = (model(x).argmax(1) == y).float().mean().item()
    if dist.get_rank() == 0:
        print(f"test accuracy {acc:.2%}")
    return acc


if __name__ == "__main__":
    weft.launch.run(main, nprocs=2)
