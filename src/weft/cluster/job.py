"""A real weft training job that the executor starts, preempts and resumes.

``python -m weft.cluster.job CONFIG.json`` trains a small MLP on scikit-learn's
digits for ``total_steps`` steps with ``nprocs`` data-parallel ranks
(``weft.launch`` + ``weft.parallel.data.DataParallel``, gloo). It resumes from
``<workdir>/ckpt.pt`` when present. Each step's batch depends only on
(seed, step), so a run that is stopped and resumed any number of times ends
with exactly the parameters of an uninterrupted run.

Preemption: when the file ``<workdir>/stop`` appears, rank 0 tells every rank
(broadcast) after the current step, the checkpoint is written (atomically)
and the process exits; no completed step is lost.

Speed emulation (CPU machines): with ``step_seconds`` set, each step is padded
with sleep to last that long, so a job runs at the throughput the cluster's
table gives for the accelerator type it was placed on. This is emulation, not
a measurement of real accelerators.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from weft.atomic import write_json


def train_rank(cfg: dict) -> dict:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from weft.data import digits
    from weft.models import digits_mlp
    from weft.parallel.checkpoint import (
        load_checkpoint,
        restore,
        save_checkpoint,
        training_state,
    )
    from weft.parallel.data import DataParallel, seed_everything

    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    workdir = Path(cfg["workdir"])
    ckpt = workdir / "ckpt.pt"
    seed_everything(int(cfg.get("seed", 0)))
    model = digits_mlp(hidden=int(cfg.get("hidden", 32)))
    opt = torch.optim.SGD(model.parameters(), lr=float(cfg.get("lr", 0.05)), momentum=0.9)
    step = restore(load_checkpoint(ckpt), model, opt) if ckpt.exists() else 0
    start_step = step
    dp = DataParallel(model)
    train, _ = digits(flat=True)
    xs, ys = train.tensors
    batch, total = int(cfg.get("batch", 32)), int(cfg["total_steps"])
    step_s = float(cfg.get("step_seconds") or 0.0)
    stop_file = workdir / "stop"
    flag = torch.zeros(1)
    if rank == 0:   # tells the executor that start-up is over and training begins
        write_json(workdir / "status.json", {"step": step, "total_steps": total, "running": True})
    while step < total:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(int(cfg.get("seed", 0)) * 1_000_003 + step)
        idx = torch.randint(len(xs), (batch * world,), generator=g)[rank::world]
        opt.zero_grad()
        F.cross_entropy(dp(xs[idx]), ys[idx]).backward()
        opt.step()
        step += 1
        if step_s:
            time.sleep(max(0.0, step_s - (time.perf_counter() - t0)))
        if rank == 0:
            flag[0] = 1.0 if stop_file.exists() else 0.0
            write_json(workdir / "status.json", {"step": step, "total_steps": total, "running": True})
        dist.broadcast(flag, 0)
        if flag.item() and step < total:
            break
    save_checkpoint(ckpt, training_state(model, opt, step))
    dist.barrier()
    return {"rank": rank, "start_step": start_step, "step": step, "done": step >= total}


def run_job(cfg: dict) -> dict:
    """Run (or resume) the job in this process's children; returns rank 0's result."""
    from weft.launch import launch

    res = launch(train_rank, int(cfg["nprocs"]), args=(cfg,), timeout=float(cfg.get("timeout", 60)))
    return res[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m weft.cluster.job CONFIG.json", file=sys.stderr)
        return 2
    cfg = json.loads(Path(argv[0]).read_text())
    result = run_job(cfg)
    write_json(Path(cfg["workdir"]) / "result.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
