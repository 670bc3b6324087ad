"""Several plans timed in interleaved rounds on live gloo ranks (weft.planner.measure)."""

import statistics
from pathlib import Path

import pytest

from weft.errors import PlanError
from weft.planner.measure import measure, time_ranks

SPEC = str(Path(__file__).resolve().parents[2] / "examples" / "gpt.py")
CONFIG = {"d_model": 32, "n_head": 2, "n_layer": 2}
DP = {"format": "weft.plan/1", "name": "dp", "mesh": {"dp_replicate": 2},
      "data_parallel": {"replicate": "weft"}}
FSDP = {"format": "weft.plan/1", "name": "fsdp", "mesh": {"dp_shard": 2},
        "data_parallel": {"shard_modules": ["blocks.*"]}}


def test_plans_timed_in_interleaved_rounds():
    from weft.plan.parse import from_dict

    rows = measure([from_dict(DP), from_dict(FSDP)], SPEC, 2, 8, steps=4, config=CONFIG,
                   many=True, rounds=2, timeout=240)
    assert len(rows) == 2 and all(len(r) == 2 for r in rows)
    for k in range(2):
        got = [r[k] for r in rows]
        # 2 timed steps in each of 2 rounds; the slowest rank's time, so the same on both
        assert len(got[0]["steps"]) == 4 and got[0]["steps"] == got[1]["steps"]
        assert all(t > 0 for t in got[0]["steps"])
        assert got[0]["step_s"] == statistics.median(got[0]["steps"])


def test_a_placed_plan_is_not_interleaved():
    placed = {**DP, "placement": ["d1", "d0"]}
    with pytest.raises(PlanError, match=r"plan\(s\) \['dp'\] have a placement"):
        time_ranks([DP, placed], SPEC, 8, 2, CONFIG, rounds=2)


def _rounds_then_groups():
    from weft.parallel.groups import live_groups

    before = len(live_groups())
    rows = time_ranks([DP, FSDP], SPEC, 8, 2, CONFIG, rounds=2)
    return before, len(live_groups()), rows


def test_no_plan_outlives_its_turn():
    """Each plan's process groups are destroyed after its turn in a round: afterwards the
    rank knows exactly the groups it knew before (none of 2 plans x 2 rounds is left)."""
    from weft.launch import launch

    for before, after, rows in launch(_rounds_then_groups, 2, timeout=240):
        assert after == before
        assert [len(r["steps"]) for r in rows] == [2, 2]
