"""Every pipeline receive is bounded by its own timeout, with an error naming who waited on what."""

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from weft.errors import PlanError
from weft.launch import launch
from weft.parallel.pipeline import Pipeline, TransferTimeout


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def silent_neighbour(stalled_rank: int, done: str):
    """`stalled_rank` builds its stage but never runs it; the other rank steps.

    A timed-out gloo receive closes the pair, so the ranks cannot meet in a
    barrier afterwards: the stalled rank waits (bounded) for a file instead."""
    pipe = Pipeline(model(), [(0, 2), (2, 3)], [[0], [1]], F.cross_entropy, "1f1b", 2,
                    recv_timeout=1.0)
    if dist.get_rank() == stalled_rank:
        deadline = time.monotonic() + 60
        while not Path(done).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return None
    try:
        pipe.step(torch.randn(4, 4), torch.randint(0, 3, (4,)))
        return "no error"
    except TransferTimeout as exc:
        return str(exc)
    finally:
        Path(done).write_text("done")


def test_receive_from_a_stalled_stage_times_out_with_a_clear_error(tmp_path):
    # rank 1 (last stage) waits for micro-batch 0's activation from rank 0, which never sends
    msgs = launch(silent_neighbour, 2, args=(0, str(tmp_path / "done")), timeout=30)
    assert msgs[0] is None
    assert msgs[1] is not None
    assert "pipeline stage 1 (rank 1)" in msgs[1]
    assert "activation of micro-batch 0" in msgs[1] and "from rank 0" in msgs[1]
    assert "recv_timeout 1 s" in msgs[1]


def test_receive_of_a_gradient_times_out(tmp_path):
    # rank 0 sends its forwards (buffered) and then waits for micro-batch 0's gradient
    msgs = launch(silent_neighbour, 2, args=(1, str(tmp_path / "done")), timeout=30)
    assert msgs[1] is None
    assert "pipeline stage 0 (rank 0)" in msgs[0]
    assert "gradient of micro-batch 0" in msgs[0] and "from rank 1" in msgs[0]


def test_bad_timeout():
    with pytest.raises(PlanError, match="recv_timeout must be > 0"):
        Pipeline.__init__(object.__new__(Pipeline), model(), [(0, 3)], [[0]], F.cross_entropy,
                          recv_timeout=0)
