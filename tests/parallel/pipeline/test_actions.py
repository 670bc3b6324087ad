"""Actions as text and schedules as CSV: parse(format(a)) == a, load(dump(s)) == s."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.errors import PlanError
from weft.parallel.pipeline.actions import (KINDS, TRANSFERS, Action, dump_csv, from_csv,
                                            load_csv, to_csv)
from weft.parallel.pipeline.schedule import build_schedule

actions = st.builds(lambda k, m, c, p: Action(k, m, c, p if k in TRANSFERS else -1),
                    st.sampled_from(KINDS), st.integers(0, 10**6), st.integers(0, 999),
                    st.integers(0, 4096))


@given(actions)
def test_format_then_parse_is_the_action(a):
    assert Action.parse(str(a)) == a
    assert repr(a) == str(a)


@pytest.mark.parametrize("text, action", [
    ("0F3", Action("F", 3, 0)), ("1B2", Action("B", 2, 1)), ("0U12", Action("U", 12, 0)),
    ("0SEND_F3@1", Action("SEND_F", 3, 0, 1)), ("1RECV_F3@0", Action("RECV_F", 3, 1, 0)),
    ("1SEND_B3@0", Action("SEND_B", 3, 1, 0)), ("10RECV_B0@11", Action("RECV_B", 0, 10, 11)),
    (" 2F0 ", Action("F", 0, 2)),
])
def test_text_form(text, action):
    assert Action.parse(text) == action


@pytest.mark.parametrize("text, message", [
    ("F3", "cannot parse 'F3'"), ("0X3", "cannot parse"), ("0F", "cannot parse"),
    ("0F3@", "cannot parse"), ("", "cannot parse"),
    ("0SEND_F3", "SEND_F needs its peer rank"), ("0F3@1", "F takes no peer rank"),
])
def test_bad_text_is_rejected(text, message):
    with pytest.raises(PlanError, match=f"^here: .*{message}"):
        Action.parse(text, "here")


@pytest.mark.parametrize("kind, ranks, v", [("gpipe", [[0], [1], [2]], 1),
                                            ("1f1b", [[0, 1], [2]], 1),
                                            ("interleaved", [[0], [1]], 3),
                                            ("pipedream", [[0], [1, 2, 3]], 1)])
def test_schedule_csv_round_trip(tmp_path, kind, ranks, v):
    sched = build_schedule(kind, ranks, 6, v)
    assert from_csv(to_csv(sched)) == sched
    dump_csv(sched, tmp_path / f"{kind}.csv")
    assert load_csv(tmp_path / f"{kind}.csv") == sched
    lines = (tmp_path / f"{kind}.csv").read_text().splitlines()
    assert [len(line.split(",")) for line in lines] == [len(sched[r]) for r in range(len(sched))]


def test_csv_errors_name_the_file_row_and_column(tmp_path):
    bad = tmp_path / "s.csv"
    bad.write_text("0F0,0SEND_F0@1\n1RECV_F0@0,1F0,1Z0\n")
    with pytest.raises(PlanError, match=r"s.csv: rank 1 \(row 2\), column 3: cannot parse '1Z0'"):
        load_csv(bad)
    with pytest.raises(PlanError, match="cannot read schedule"):
        load_csv(tmp_path / "missing.csv")
    with pytest.raises(PlanError, match=r"one row per rank 0..W-1; got ranks \[0, 2\]"):
        to_csv({0: [], 2: []})
    # a rank without actions is an empty row, and reads back as one
    assert from_csv(to_csv({0: [Action("F", 0, 0)], 1: [], 2: [Action("F", 0, 0)]})) == \
        {0: [Action("F", 0, 0)], 1: [], 2: [Action("F", 0, 0)]}
