"""A training script that weft does not know: plain PyTorch, run by `weft cluster run` as a
command. It follows the executor's contract (docs/cluster.md) through environment variables:
resume from $WEFT_CHECKPOINT, report {"step": N} to $WEFT_STATUS_FILE, and when
$WEFT_STOP_FILE appears, checkpoint and exit 0. Step s's batch depends only on
($WEFT_SEED, s), so a preempted job ends exactly where an uninterrupted one would.
"""

import json
import os
import time
from pathlib import Path

import torch
from torch import nn

env = os.environ
ckpt, status, stop = (Path(env[k]) for k in ("WEFT_CHECKPOINT", "WEFT_STATUS_FILE", "WEFT_STOP_FILE"))
total, seed, pad = int(env["WEFT_TOTAL_STEPS"]), int(env["WEFT_SEED"]), float(env["WEFT_STEP_SECONDS"])


def report(step):
    tmp = status.with_name(status.name + ".tmp")
    tmp.write_text(json.dumps({"step": step}))
    os.replace(tmp, status)               # atomic: the executor never reads half a file


torch.manual_seed(seed)
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
if ckpt.exists():
    state = torch.load(ckpt)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    step = state["step"]
report(step)                              # start-up is over
w = torch.linspace(-1, 1, 8)
while step < total:
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed * 100_003 + step)
    x = torch.randn(32, 8, generator=g)
    loss = nn.functional.mse_loss(model(x).squeeze(1), torch.sin(x @ w))
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    time.sleep(max(0.0, pad - (time.perf_counter() - t0)))     # speed emulation
    if stop.exists() or step == total:
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
        os.replace(tmp, ckpt)
        report(step)
        break
    report(step)
