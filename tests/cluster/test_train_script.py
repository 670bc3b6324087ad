"""examples/cluster/train_script.py follows the executor's contract: with WEFT_STEP_PHASE
(a co-located pair in tick-tock) its steps start on the phase grid."""

import runpy
import time
from pathlib import Path

import torch

from weft.cluster.contract import JobEnv

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "cluster" / "train_script.py"


def test_train_script_starts_its_steps_on_the_phase_grid(tmp_path, monkeypatch):
    epoch, offset, period, steps = time.time() - 100.0, 0.03, 0.1, 8
    env = JobEnv(tmp_path, steps, seed=3, step_seconds=0.0, phase=(epoch, offset, period))
    for k, v in env.variables().items():
        monkeypatch.setenv(k, v)
    starts = []
    randn = torch.randn

    def timed_randn(*args, **kwargs):      # the script draws each step's batch first thing
        starts.append(time.time())
        return randn(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", timed_randn)
    with torch.random.fork_rng():
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert len(starts) == steps and env.progress() == steps
    assert torch.load(env.checkpoint)["step"] == steps
    # how far each step started from its grid time (circular, in seconds)
    err = sorted(abs((t - epoch - offset + period / 2) % period - period / 2) for t in starts)
    assert err[len(err) // 2] < 0.02, err
    gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
    assert 0.9 * period < gaps[len(gaps) // 2] < 1.2 * period, gaps
