"""A plan's placement decides which process is which mesh rank (weft.parallel.mesh).

The 4-rank world of tests/parallel/test_parallelize.py trains a placed plan and checks each
process's mesh coordinate; these check the mapping itself against its definition.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.errors import PlanError
from weft.parallel.mesh import mesh_ranks, this_device


@settings(max_examples=50, deadline=None)
@given(st.permutations(list(range(6))), st.permutations(list(range(6))))
def test_mesh_rank_r_is_the_process_on_placement_r(places, runs_on):
    placement = [f"n{i // 2}.gpu{i % 2}" for i in places]
    devices = [f"n{i // 2}.gpu{i % 2}" for i in runs_on]  # process g runs on devices[g]
    order = mesh_ranks(placement, devices)
    assert sorted(order) == list(range(6))
    for r, g in enumerate(order):
        assert devices[g] == placement[r]


def test_rank_order_without_a_placement_or_known_devices():
    assert mesh_ranks((), ["a", "b"]) == [0, 1]
    assert mesh_ranks(("b", "a"), [None, None]) == [0, 1]  # the launcher placed them


@pytest.mark.parametrize("devices, message", [
    (["a", None], r"processes \[1\] do not know their device"),
    (["a", "z"], "process 1 runs on 'z', which is not in the plan's placement"),
    (["a", "a"], "processes 0 and 1 both run on 'a'"),
    (["a", "b", "c"], "2 devices for 3 processes"),
])
def test_inconsistent_devices_are_plan_errors(devices, message):
    with pytest.raises(PlanError, match=message):
        mesh_ranks(("a", "b"), devices)


def test_weft_device_fills_in_the_launcher_fields(monkeypatch):
    monkeypatch.delenv("WEFT_DEVICE", raising=False)
    assert this_device() is None
    monkeypatch.setenv("GROUP_RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WEFT_DEVICE", "n{node}.gpu{local_rank}")
    assert this_device() == "n3.gpu1"
    monkeypatch.setenv("WEFT_DEVICE", "n{nodes}")
    with pytest.raises(PlanError, match=r"WEFT_DEVICE='n\{nodes\}'.*\{node\}"):
        this_device()
