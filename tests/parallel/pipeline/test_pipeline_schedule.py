"""Schedules as data: validated without processes."""

import pytest

from weft.errors import PlanError
from weft.parallel.pipeline.schedule import Action, build_schedule, simulate_pipeline


def max_in_flight(actions):
    live, worst = set(), 0
    for a in actions:
        if a.kind == "F":
            live.add((a.mb, a.chunk))
        elif a.kind == "B":
            live.discard((a.mb, a.chunk))
        worst = max(worst, len(live))
    return worst


@pytest.mark.parametrize("kind,v", [("gpipe", 1), ("1f1b", 1), ("pipedream", 1),
                                    ("interleaved", 2), ("interleaved", 3)])
@pytest.mark.parametrize("S", [1, 2, 3, 4])
@pytest.mark.parametrize("mult", [1, 2, 3])
def test_every_schedule_completes_and_runs_each_op_once(kind, v, S, mult):
    M = S * mult
    sched = build_schedule(kind, [[s] for s in range(S)], M, v)
    result = simulate_pipeline(sched)  # raises on deadlock or unmatched transfers
    ops = sorted((a.kind, a.mb, a.chunk) for acts in sched.values() for a in acts
                 if a.kind in ("F", "B"))
    want = sorted((k, m, c) for k in "FB" for m in range(M) for c in range(S * v))
    assert ops == want
    # each rank runs a micro-batch's forward before its backward
    for acts in sched.values():
        seen = set()
        for a in acts:
            if a.kind == "F":
                seen.add((a.mb, a.chunk))
            if a.kind == "B":
                assert (a.mb, a.chunk) in seen
    assert result["makespan"] >= 2 * M * v


@pytest.mark.parametrize("reps", [[[0, 1], [2]], [[0], [1, 2]], [[0, 1], [2, 3]],
                                  [[0], [1, 2, 3]], [[0], [1], [2, 3]]])
@pytest.mark.parametrize("kind", ["gpipe", "1f1b", "pipedream"])
def test_replicated_stages_split_micro_batches(reps, kind):
    M = 12
    sched = build_schedule(kind, reps, M)
    simulate_pipeline(sched)
    for stage in reps:
        mbs = [sorted(a.mb for a in sched[r] if a.kind == "F") for r in stage]
        assert sorted(m for ms in mbs for m in ms) == list(range(M))
        assert all(len(ms) == M // len(stage) for ms in mbs)


def test_1f1b_bounds_activations_gpipe_does_not():
    S, M = 4, 8
    g = build_schedule("gpipe", [[s] for s in range(S)], M)
    f = build_schedule("1f1b", [[s] for s in range(S)], M)
    assert [max_in_flight(g[s]) for s in range(S)] == [M] * S
    assert [max_in_flight(f[s]) for s in range(S)] == [S - s for s in range(S)]


def test_bubble_fractions():
    S, M = 4, 8
    ranks = [[s] for s in range(S)]
    f = simulate_pipeline(build_schedule("1f1b", ranks, M))
    assert f["bubble"] == pytest.approx((S - 1) / (M + S - 1))  # unit F and B
    # interleaving v chunks of 1/v the work shrinks the bubble
    il = simulate_pipeline(build_schedule("interleaved", ranks, M, 2),
                  duration=lambda r, a: 0.5 if a.kind in "FB" else 0.0)
    assert il["bubble"] < f["bubble"]
    assert il["makespan"] < f["makespan"]


def test_pipedream_updates_after_each_backward():
    sched = build_schedule("pipedream", [[0], [1]], 4)
    for acts in sched.values():
        kinds = [a.kind for a in acts if a.kind in ("B", "U")]
        assert kinds == ["B", "U"] * 4


def test_deadlock_and_unmatched_transfers_are_detected():
    bad = {0: [Action("RECV_B", 0, 0, 1), Action("F", 0, 0), Action("SEND_F", 0, 0, 1),
               Action("B", 0, 0)],
           1: [Action("RECV_F", 0, 1, 0), Action("F", 0, 1), Action("B", 0, 1),
               Action("SEND_B", 0, 1, 0)]}
    with pytest.raises(PlanError, match="deadlocks"):
        simulate_pipeline(bad)
    lost = {0: [Action("F", 0, 0), Action("SEND_F", 0, 0, 1)], 1: [Action("F", 0, 1)]}
    with pytest.raises(PlanError, match="unmatched"):
        simulate_pipeline(lost)


def test_bad_schedule_requests():
    with pytest.raises(PlanError, match="unknown schedule"):
        build_schedule("zigzag", [[0]], 2)
    with pytest.raises(PlanError, match="divisible"):
        build_schedule("interleaved", [[0], [1], [2]], 4, 2)
    with pytest.raises(PlanError, match="replicated"):
        build_schedule("interleaved", [[0, 1], [2]], 4, 2)
