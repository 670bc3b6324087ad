"""The built-in job: train a model spec under the executor's contract (``contract.py``).

``python -m weft.cluster.model_job --model SPEC [--dataset SPEC] [--batch N] [--lr X]``
trains the spec's model with ``WEFT_NPROCS`` data-parallel gloo ranks
(``weft.launch`` + ``weft.parallel.data.DataParallel``) for ``WEFT_TOTAL_STEPS``
steps, resuming from ``WEFT_CHECKPOINT`` when present. The spec is the one
``weft train`` loads (``weft.model_spec``): ``model`` (a module or a factory),
``dataset()`` returning (train, test), optional ``loss_fn`` (default cross
entropy) and ``optimizer(params)`` (default SGD, momentum 0.9).

Determinism: the model is built after seeding with ``WEFT_SEED``, and step s
draws its batch, and reseeds torch for any randomness in the model, from
(seed, s) alone, so a job stopped and resumed any number of times ends with
exactly the parameters of an uninterrupted run.

Preemption: when ``WEFT_STOP_FILE`` appears, rank 0 tells every rank
(broadcast) after the current step; the checkpoint is written atomically and
the process exits 0. With ``WEFT_STEP_SECONDS`` each step is padded with sleep
to that long, so the job runs at the speed the cluster's throughput table gives
its accelerator type: emulation, not a measurement. A job sharing its accelerator
with a partner (``WEFT_STEP_PHASE``) starts its steps on the pair's phase grid
instead, so the two keep the launch offset their memory profiles were planned
with (tick-tock).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from weft.cluster.contract import JobEnv


def _batch(train, idx):
    import torch.utils.data as tud

    if isinstance(train, tud.TensorDataset):
        return tuple(t[idx] for t in train.tensors)
    return tud.default_collate([train[int(i)] for i in idx])


def train_rank(env: JobEnv, model_spec: str, dataset_spec: str | None, batch: int, lr: float) -> dict:
    """One rank of the job; returns where it started and stopped."""
    import torch
    import torch.distributed as dist

    from weft.cluster.tasks import load_dataset
    from weft.model_spec import extra, load_model
    from weft.parallel.checkpoint import (
        load_checkpoint,
        restore,
        save_checkpoint,
        training_state,
    )
    from weft.parallel.data import DataParallel, seed_everything

    rank, world = dist.get_rank(), dist.get_world_size()
    seed_everything(env.seed)
    model = load_model(model_spec)
    loss_fn = extra(model_spec, "loss_fn", torch.nn.functional.cross_entropy)
    make_opt = extra(model_spec, "optimizer") or (lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9))
    opt = make_opt(model.parameters())
    step = restore(load_checkpoint(env.checkpoint), model, opt) if env.checkpoint.exists() else 0
    start_step = step
    dp = DataParallel(model)
    train, _ = load_dataset(model_spec, dataset_spec)()
    flag = torch.zeros(1)
    if rank == 0:
        env.report(step)
    env.pace(None)               # a co-located job starts on its phase grid
    while step < env.total_steps:
        t0 = time.time()
        g = torch.Generator().manual_seed(env.seed * 1_000_003 + step)
        idx = torch.randint(len(train), (batch * world,), generator=g)[rank::world]
        torch.manual_seed((env.seed * 1_000_003 + step) * 1009 + rank)
        x, y = _batch(train, idx)
        opt.zero_grad()
        loss_fn(dp(x), y).backward()
        opt.step()
        step += 1
        env.pace(t0)
        if rank == 0:
            flag[0] = 1.0 if env.stop_requested() else 0.0
        dist.broadcast(flag, 0)
        if flag.item() or step >= env.total_steps:
            save_checkpoint(env.checkpoint, training_state(model, opt, step))
            dist.barrier()
            if rank == 0:     # the checkpoint holds every step reported
                env.report(step)
            if flag.item():
                break
        elif rank == 0:
            env.report(step)
    return {"rank": rank, "start_step": start_step, "step": step, "done": step >= env.total_steps}


def final_parameters(job_dir: str | Path) -> dict:
    """The model's state dict in a model job's checkpoint."""
    from weft.parallel.checkpoint import load_checkpoint

    return load_checkpoint(Path(job_dir) / "ckpt.pt")["model"]


def main(argv: list[str] | None = None) -> int:
    from weft.launch import launch

    ap = argparse.ArgumentParser(prog="python -m weft.cluster.model_job", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    args = ap.parse_args(argv)
    env = JobEnv.from_env()
    launch(train_rank, env.nprocs, args=(env, args.model, args.dataset, args.batch, args.lr), timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
