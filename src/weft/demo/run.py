"""The main job: data-parallel training of a small CNN on scikit-learn's digits.

`weft demo` trains on 4 local gloo ranks, shows a progress bar with loss and
samples/s, prints test accuracy and throughput, and writes
`runs/<timestamp>/report.json` and `loss.png`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DemoConfig:
    ranks: int = 4
    epochs: int = 15
    global_batch: int = 64
    lr: float = 3e-3
    backend: str = "weft"  # or "ddp"
    seed: int = 0
    out: str = "runs"
    progress: bool = True


def _evaluate(model: nn.Module, dataset) -> float:
    """Accuracy over the whole test set: each rank scores its shard, counts are summed."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = dataset.tensors
    idx = torch.arange(rank, len(y), world)
    model.eval()
    with torch.no_grad():
        correct = (model(x[idx]).argmax(1) == y[idx]).sum()
    model.train()
    counts = torch.tensor([float(correct), float(len(idx))])
    dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def _progress(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"),
                    TextColumn("{task.fields[rate]:,.0f} samples/s"), TimeElapsedColumn(),
                    disable=not enabled, transient=False)


def train_worker(cfg: DemoConfig) -> dict:
    from weft.demo.data import digits
    from weft.demo.models import digits_cnn
    from weft.parallel import data_parallel, distributed_loader, seed_everything

    rank, world = dist.get_rank(), dist.get_world_size()
    if cfg.global_batch % world:
        raise ValueError(f"global batch {cfg.global_batch} is not divisible by {world} ranks")
    seed_everything(cfg.seed)
    train, test = digits(seed=cfg.seed)
    loader = distributed_loader(train, cfg.global_batch // world, seed=cfg.seed)
    model = data_parallel(digits_cnn(), backend=cfg.backend)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = len(loader)
    losses, step = [], 0
    with _progress(cfg.progress and rank == 0) as bar:
        task = bar.add_task(f"{world} ranks, {cfg.backend}", total=cfg.epochs * steps_per_epoch,
                            loss=float("nan"), rate=0.0)
        start = time.perf_counter()
        for epoch in range(cfg.epochs):
            loader.sampler.set_epoch(epoch)
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                step += 1
                mean = loss.detach().clone()
                dist.all_reduce(mean)
                losses.append(float(mean) / world)
                if rank == 0:
                    rate = step * cfg.global_batch / (time.perf_counter() - start)
                    bar.update(task, advance=1, loss=losses[-1], rate=rate)
        seconds = time.perf_counter() - start
    accuracy = _evaluate(model, test)
    return {"rank": rank, "losses": losses, "accuracy": accuracy, "seconds": seconds,
            "samples": step * cfg.global_batch, "steps": step}


def run_demo(cfg: DemoConfig) -> dict:
    from weft.launch import launch
    from weft.runs import plot_loss, run_dir, write_json

    t0 = time.perf_counter()
    results = launch(train_worker, cfg.ranks, args=(cfg,), timeout=120)
    r0 = results[0]
    out = run_dir(cfg.out)
    report = {
        "config": asdict(cfg),
        "test_accuracy": r0["accuracy"],
        "samples_per_second": r0["samples"] / r0["seconds"],
        "train_seconds": r0["seconds"],
        "wall_seconds": time.perf_counter() - t0,
        "steps": r0["steps"],
        "final_loss": r0["losses"][-1],
        "losses": r0["losses"],
    }
    write_json(out / "report.json", report)
    plot_loss(out / "loss.png", list(range(1, len(r0["losses"]) + 1)), r0["losses"],
              title=f"digits CNN, {cfg.ranks} ranks ({cfg.backend}): "
                    f"test accuracy {r0['accuracy']:.1%}")
    report["dir"] = str(out)
    return report
