"""One training script for every plan: the GPT of examples/gpt.py, trained under the plan given.

    python examples/train_gpt.py examples/plans/single.yaml                 # one process
    python examples/train_gpt.py examples/plans/dp.yaml --ranks 4           # 4 local ranks
    torchrun --nproc-per-node 4 examples/train_gpt.py examples/plans/fsdp.yaml
    python examples/train_gpt.py examples/plans/dp_tp.yaml --ranks 4 --save ckpt
    python examples/train_gpt.py examples/plans/fsdp.yaml --ranks 2 --resume ckpt

Only the plan file changes between single-process, DP, FSDP, DP+TP and DP+TP+PP training
(docs/parallelize.md walks through them). `weft train --plan PLAN --model examples/gpt.py`
runs the same loop for any model spec, with a progress bar and a run report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpt

import weft
from weft.launch import run


def train(plan, steps: int = 50, batch: int = 16, lr: float = 3e-3, seed: int = 0,
          resume: str | None = None, log=None):
    """Train under `plan` for `steps` global batches of `batch` windows (continuing from the
    checkpoint `resume`, written under any plan); return the model, its optimizer and the
    number of steps trained in all."""
    train_set, _ = gpt.dataset()
    model = weft.parallelize(gpt.model(seed=seed), plan)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = model.load(resume, opt)["step"] if resume else 0
    for step, (x, y) in enumerate(model.loader(train_set, batch_size=batch, seed=seed)):
        if step == start + steps:
            break
        if step < start:  # the batches the checkpointed run already trained on
            continue
        loss = model.step(x, y, gpt.loss_fn)  # forward + backward (pipelined: the schedule)
        opt.step()
        opt.zero_grad()
        if log is not None and loss is not None:  # None: a rank without the last stage
            log(model, step + 1, float(loss))
    return model, opt, start + steps


def _log(model, step, loss):
    if step % 10 == 0 and model.dp_rank == 0 and model.coords["tp"] == 0:
        print(f"step {step}: loss {loss:.4f}", flush=True)


def main(plan, steps, batch, lr, resume, save):
    model, opt, done = train(plan, steps, batch, lr, resume=resume, log=_log)
    if save:
        model.save(save, opt, step=done)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("plan", help="a weft.plan/1 file, e.g. examples/plans/dp.yaml")
    p.add_argument("--ranks", type=int, default=1, help="local ranks (ignored under torchrun)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=16, help="global batch (windows of 32 chars)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--resume", help="continue from this checkpoint (saved under any plan)")
    p.add_argument("--save", help="write a checkpoint folder here at the end")
    a = p.parse_args()
    run(main, nprocs=a.ranks, args=(a.plan, a.steps, a.batch, a.lr, a.resume, a.save))
