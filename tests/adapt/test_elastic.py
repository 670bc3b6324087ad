"""Elastic resize without restarting survivors, and surviving a SIGKILLed worker (real gloo ranks)."""

from collections import Counter

import pytest
import torch

from weft.adapt.config import AdaptConfig
from weft.adapt.host import run_elastic
from weft.adapt.policy import ScheduleResize

N_TRAIN = 1437  # digits training split


@pytest.mark.slow
def test_resize_2_4_3_keeps_replicas_equal_and_covers_the_epoch_exactly():
    cfg = AdaptConfig(workers=2, max_workers=4, epochs=1, hidden=32, log_samples=True)
    out = run_elastic(cfg, ScheduleResize({4: 4, 9: 3}), timeout=240)
    reports, pids = out["reports"], out["pids"]
    assert not out["dead"]
    # The original workers never restarted: same PID in every membership epoch.
    for wid in (0, 1):
        r = reports[wid]
        assert [(m["epoch"], m["world"]) for m in r["memberships"]] == [(0, 2), (1, 4), (2, 3)]
        assert {m["pid"] for m in r["memberships"]} == {pids[wid]} == {r["pid_end"]}
    joiners = [r for r in reports.values() if r["role"] == "joiner"]
    assert len(joiners) == 2 and sum(r["left"] for r in joiners) == 1  # 4 -> 3: one left
    finals = [r for r in reports.values() if r["role"] != "standby" and not r["left"]]
    assert len(finals) == 3 and sorted(r["rank"] for r in finals) == [0, 1, 2]
    # Parameters identical on every final rank.
    for r in finals[1:]:
        assert torch.equal(r["params"], finals[0]["params"])
    # Every sample of the epoch trained on exactly once, across all ranks and worlds.
    seen = Counter(i for r in reports.values() for _, ep, idx in r.get("samples", []) if ep == 0
                   for i in idx)
    assert sorted(seen) == list(range(N_TRAIN)) and set(seen.values()) == {1}
    events = [(e["step"], e["kind"], e.get("new")) for e in reports[0]["events"]
              if e["kind"] != "replan"]
    assert events == [(4, "resize", 4), (9, "resize", 3)]


@pytest.mark.slow
def test_sigkill_one_of_four_workers_survivors_finish():
    cfg = AdaptConfig(workers=4, max_workers=4, epochs=2, hidden=32, kill=[10, 2], pg_timeout=8)
    out = run_elastic(cfg, None, timeout=240)
    assert out["dead"] == {2: -9}
    survivors = [out["reports"][w] for w in (0, 1, 3)]
    # Epoch 0: 10 steps of 4 x 16 samples, the rest at 3 x 16; epoch 1 at 3 x 16.
    expected_steps = 10 + -(-(N_TRAIN - 640) // 48) + -(-N_TRAIN // 48)
    for r in survivors:
        assert r["pid_end"] == out["pids"][r["wid"]]
        assert [(m["world"], m["why"]) for m in r["memberships"]] == [(4, "start"), (3, "failure")]
        (fail,) = [e for e in r["events"] if e["kind"] == "failure"]
        assert fail["lost"] == [2] and fail["step"] == 10  # rolled back to the last completed step
        assert r["history"][-1]["world"] == 3
        assert r["step"] == expected_steps
        assert torch.equal(r["params"], survivors[0]["params"])
    h = survivors[0]["history"]
    assert h[-1]["loss"] < h[0]["loss"]


class _Buggy:
    def on_step(self, metrics, ctx):
        if ctx.step == 2:
            raise ZeroDivisionError("a bug in the user's policy")


def test_a_worker_bug_stops_the_job_with_its_traceback():
    from weft.errors import LaunchError

    cfg = AdaptConfig(workers=1, max_workers=1, epochs=1, max_steps=5, hidden=16)
    with pytest.raises(LaunchError, match="adaptive worker 0 failed") as info:
        run_elastic(cfg, _Buggy(), timeout=120)
    assert "ZeroDivisionError: a bug in the user's policy" in str(info.value)
