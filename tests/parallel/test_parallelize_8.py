"""The last step of docs/parallelize.md: DP+TP+PP (pp=2 x dp=2 x tp=2) needs 8 ranks.

examples/train_gpt.py under examples/plans/pp_dp_tp.yaml reaches the parameters the same
script reaches in one process, and its checkpoint continues in one process.
"""

import sys
from pathlib import Path

import pytest

from weft.launch import launch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))
import train_gpt

from tests._close import assert_params_close
from tests.parallel.test_parallelize import BATCH, LR, STEPS

PLANS = EXAMPLES / "plans"


def _rank(ckpt):
    model, opt, done = train_gpt.train(PLANS / "pp_dp_tp.yaml", steps=STEPS, batch=BATCH, lr=LR)
    model.save(ckpt, opt, step=done)
    return model.full_state_dict(), dict(model.coords), model.pipeline.indices


@pytest.mark.slow
@pytest.mark.timeout(900)  # 8 processes on 2 cores: ~170 s at a load average of 20
def test_dp_tp_pp_on_8_ranks_matches_one_process(tmp_path):
    ckpt = tmp_path / "ckpt"
    results = launch(_rank, 8, args=(str(ckpt),), timeout=120)
    single = PLANS / "single.yaml"
    ref, _, _ = train_gpt.train(single, steps=STEPS, batch=BATCH, lr=LR)
    ref = ref.full_state_dict()
    for rank, (state, coords, stages) in enumerate(results):
        assert_params_close(state, ref, f"pp_dp_tp rank {rank}")
        assert stages == [coords["pp"]] and coords["tp"] == rank % 2  # the mesh of the plan
    # the 8-rank checkpoint continues in one process: 2 more steps = STEPS + 2 from scratch
    more, _, _ = train_gpt.train(single, steps=2, batch=BATCH, lr=LR, resume=str(ckpt))
    whole, _, _ = train_gpt.train(single, steps=STEPS + 2, batch=BATCH, lr=LR)
    assert_params_close(more.full_state_dict(), whole.full_state_dict(), "8 ranks -> 1 process")
