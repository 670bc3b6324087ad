"""Schedules as data: validated without processes."""

from pathlib import Path

import pytest

from weft.errors import PlanError
from weft.parallel.pipeline.actions import Action, from_csv, load_csv, to_csv
from weft.parallel.pipeline.schedule import (KINDS, build_schedule, compute_order, lower,
                                             simulate_pipeline, validate_schedule)

GOLDEN = Path(__file__).parent / "golden"
# the shapes of the golden files: (stage ranks, micro-batches, chunks per stage)
SHAPES = {"gpipe": ([[0], [1]], 3, 1), "1f1b": ([[0], [1], [2]], 4, 1),
          "interleaved": ([[0], [1]], 4, 2), "pipedream": ([[0], [1, 2]], 4, 1)}


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


@pytest.mark.parametrize("kind", KINDS)
def test_builders_match_the_golden_files(kind):
    # golden/<kind>.csv: the schedule as built before the builders shared `lower`, one row
    # per rank (see weft.parallel.pipeline.actions for the text form)
    ranks, M, v = SHAPES[kind]
    sched = build_schedule(kind, ranks, M, v)
    assert to_csv(sched) == (GOLDEN / f"{kind}.csv").read_text()
    assert load_csv(GOLDEN / f"{kind}.csv") == sched
    validate_schedule(sched, ranks, M, v)


@pytest.mark.parametrize("kind", KINDS)
def test_compute_order_lowers_to_the_schedule(kind):
    ranks, M, v = SHAPES[kind]
    compute = compute_order(kind, ranks, M, v)
    assert all(a.kind in ("F", "B", "U") for acts in compute.values() for a in acts)
    full = lower(compute, ranks, v)
    assert full == build_schedule(kind, ranks, M, v)
    # lowering keeps the compute order and adds only transfers
    assert {r: [a for a in acts if a.kind in ("F", "B", "U")] for r, acts in full.items()} == \
        compute


def test_a_hand_written_compute_order_is_lowered_and_runs():
    # 2 stages, 2 micro-batches: stage 0 runs both forwards first, stage 1 alternates
    compute = from_csv("0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n")
    sched = lower(compute, [[0], [1]])
    assert to_csv(sched) == ("0F0,0SEND_F0@1,0F1,0SEND_F1@1,0RECV_B0@1,0B0,0RECV_B1@1,0B1\n"
                             "1RECV_F0@0,1F0,1B0,1SEND_B0@0,1RECV_F1@0,1F1,1B1,1SEND_B1@0\n")
    assert validate_schedule(sched, [[0], [1]], 2)["makespan"] == 6  # unit F and B


def _edit(text, rank, fn):
    rows = [line.split(",") for line in text.splitlines()]
    fn(rows[rank])
    return from_csv("\n".join(",".join(r) for r in rows) + "\n")


def _swap(i, j):
    def fn(row):
        row[i], row[j] = row[j], row[i]
    return fn


@pytest.mark.parametrize("rank, edit, message", [
    (1, _swap(0, 1), r"rank 1, action 0 \(1F0\): comes before 1RECV_F0@0"),
    (0, lambda row: row.remove("0SEND_F2@1"), "never runs 0SEND_F2"),
    (0, lambda row: row.insert(3, "0F1"), r"action 3 \(0F1\): appears twice"),
    (0, lambda row: row.__setitem__(1, "0SEND_F0@0"), "chunk 1 of micro-batch 0 is not on rank 0"),
    (1, lambda row: row.append("0F0"), "chunk 0 of micro-batch 0 runs on rank 0"),
    (1, lambda row: row.append("1F3"), "out of range"),
    (0, lambda row: row.remove("0B2"), "never runs 0B2"),
    (1, _swap(6, 7), r"1SEND_B0@0\): comes before 1B0"),
    # every rank's own order is fine, but rank 0 waits for a gradient before it sends the
    # activation that rank 1 needs to compute it
    (0, _swap(1, 6), "deadlocks"),
])
def test_a_broken_schedule_is_rejected(rank, edit, message):
    ranks, M, v = SHAPES["gpipe"]
    text = (GOLDEN / "gpipe.csv").read_text()
    validate_schedule(from_csv(text), ranks, M, v)  # the unbroken one passes
    with pytest.raises(PlanError, match=message):
        validate_schedule(_edit(text, rank, edit), ranks, M, v)


def test_a_schedule_for_other_ranks_is_rejected():
    sched = build_schedule("1f1b", [[0], [1]], 2)
    with pytest.raises(PlanError, match=r"schedule has ranks \[0, 1\]; the plan has \[0, 1, 2\]"):
        validate_schedule(sched, [[0], [1, 2]], 2)
