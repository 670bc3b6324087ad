"""A training script written without weft's trainer: plain PyTorch, run by `weft cluster run`
as a command. It follows the executor's contract (docs/cluster.md) through
`weft.cluster.contract.JobEnv`, which reads the WEFT_* environment variables: resume from
the checkpoint, report {"step": N} to the status file, and when the stop file appears,
checkpoint and exit 0. `JobEnv.pace` pads each step to $WEFT_STEP_SECONDS or, for a job
sharing its slot with a partner (tick-tock), starts each step on $WEFT_STEP_PHASE's grid.
Step s's batch depends only on (seed, s), so a preempted job ends exactly where an
uninterrupted one would.
"""

import os
import time

import torch
from torch import nn

from weft.cluster.contract import JobEnv

env = JobEnv.from_env()
torch.manual_seed(env.seed)
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
step = 0
if env.checkpoint.exists():
    state = torch.load(env.checkpoint)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    step = state["step"]
env.report(step)                          # start-up is over
w = torch.linspace(-1, 1, 8)
env.pace(None)                            # a co-located job starts on its phase grid
while step < env.total_steps:
    t0 = time.time()
    g = torch.Generator().manual_seed(env.seed * 100_003 + step)
    x = torch.randn(32, 8, generator=g)
    loss = nn.functional.mse_loss(model(x).squeeze(1), torch.sin(x @ w))
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    env.pace(t0)                          # speed emulation, or wait for the next grid time
    if env.stop_requested() or step == env.total_steps:
        tmp = env.checkpoint.with_name(env.checkpoint.name + ".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
        os.replace(tmp, env.checkpoint)   # atomic: a stop never leaves half a checkpoint
        env.report(step)
        break
    env.report(step)
