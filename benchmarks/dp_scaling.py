"""Data-parallel scaling: weft's runtime vs torch DDP, same processes, same run.

For 1, 2 and 4 local gloo ranks, trains the same MLP with weft's DataParallel
and with torch's DistributedDataParallel in alternating rounds (so both see the
same machine state), and prints samples/s and the ratio weft/DDP (aim >= 0.95).

    python benchmarks/dp_scaling.py [--quick] [--json out.json]
"""

from __future__ import annotations

import time

from _common import emit, figure, parser

import torch
import torch.distributed as dist
from torch import nn


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))  # ~1.3M parameters, 5 MB of gradients


def _measure(model, steps, batch):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 256), torch.randint(0, 10, (batch,))
    for _ in range(2):  # warm-up
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    dist.barrier()
    return steps * batch * dist.get_world_size() / (time.perf_counter() - t0)


def _worker(rounds, steps, batch):
    from weft.parallel import data_parallel

    rates = {"weft": [], "ddp": []}
    models = {b: data_parallel(_model(), backend=b) for b in rates}
    for _ in range(rounds):
        for b in rates:
            rates[b].append(_measure(models[b], steps, batch))
    return {b: sorted(v)[len(v) // 2] for b, v in rates.items()}  # median round


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    from weft.launch import launch

    rounds, steps, batch = (3, 10, 32) if args.quick else (5, 30, 32)
    figures = []
    for world in (1, 2, 4):
        r = launch(_worker, world, args=(rounds, steps, batch), timeout=300)[0]
        figures += [figure(f"weft samples/s @{world}", r["weft"], "samples/s"),
                    figure(f"ddp samples/s @{world}", r["ddp"], "samples/s"),
                    figure(f"weft/ddp @{world}", r["weft"] / r["ddp"], "x", target=0.95)]
    emit(figures, args.json, "data-parallel throughput: weft vs torch DDP (per-rank batch "
                             f"{batch}, gloo on 127.0.0.1)")


if __name__ == "__main__":
    main()
