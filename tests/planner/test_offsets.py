"""The offset planner against brute force: every launch offset of every wave tried."""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.errors import PlanError
from weft.planner.offsets import (LinearMemory, combined, combined_peak, max_batch, max_waves,
                                  plan_offsets)


def brute_peak(profiles, offsets):
    """Bytes held together at the worst bin, summed wave by wave (no numpy shortcuts)."""
    n = len(profiles[0])
    return max(sum(p[(t - o) % n] for p, o in zip(profiles, offsets)) for t in range(n))


def brute_best(profiles):
    n = len(profiles[0])
    return min(brute_peak(profiles, offs)
               for offs in itertools.product(range(n), repeat=len(profiles)))


@st.composite
def waves(draw):
    n = draw(st.integers(1, 7))
    k = draw(st.integers(1, 4))
    bins = st.lists(st.integers(0, 50), min_size=n, max_size=n)
    first = draw(bins)
    # some waves repeat an earlier profile (the planner's symmetry pruning), some differ
    profiles = [first]
    for _ in range(k - 1):
        profiles.append(draw(st.sampled_from(profiles)) if draw(st.booleans()) else draw(bins))
    return [list(map(float, p)) for p in profiles]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(waves())
def test_planned_peak_equals_brute_force(profiles):
    plan = plan_offsets([np.array(p) for p in profiles])
    assert plan.peak == brute_best(profiles)
    assert plan.offsets[0] == 0 and len(plan.offsets) == len(profiles)
    assert brute_peak(profiles, plan.offsets) == plan.peak          # the offsets achieve it
    assert plan.gang_peak == brute_peak(profiles, [0] * len(profiles))
    assert combined_peak(profiles, plan.offsets) == plan.peak


def test_two_identical_waves_interleave_half_a_period():
    # a forward ramp to the peak, then a backward ramp down: the classic training step
    step = np.array([1, 2, 3, 4, 5, 6, 7, 8, 7, 6, 5, 4, 3, 2, 1, 0], float)
    plan = plan_offsets([step, step])
    assert plan.gang_peak == 16
    assert plan.peak == 8 and plan.offsets == (0, 8)     # half a step: peak meets trough
    assert combined([step, step], plan.offsets).max() == 8


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 20), min_size=2, max_size=6), st.lists(st.integers(0, 5),
       min_size=2, max_size=6), st.integers(1, 3), st.integers(10, 150), st.booleans())
def test_max_batch_is_the_largest_that_fits(static, act, waves, budget, offsets):
    n = min(len(static), len(act))
    mem = LinearMemory(1, np.array(static[:n], float), 2,
                       np.array(static[:n], float) + np.array(act[:n], float))

    def fits(b):
        p = list(mem(b))
        offs = itertools.product(range(n), repeat=waves) if offsets and waves > 1 \
            else [(0,) * waves]
        return min(brute_peak([p] * waves, o) for o in offs) <= budget

    b = max_batch(mem, budget, waves=waves, offsets=offsets, hi=64)
    if b == 0:
        assert not fits(1)
    else:
        assert fits(b) and (b == 64 or not fits(b + 1))


def test_max_waves_and_errors():
    step = np.array([0, 4, 8, 4], float)
    assert max_waves(step, 8)[0] == 2            # 8+0 and 4+4: two waves fit where one peaks
    assert max_waves(step, 7)[0] == 0
    with pytest.raises(PlanError, match="profile 1: expected 4 bins"):
        plan_offsets([step, step[:3]])
    with pytest.raises(PlanError, match="finite and >= 0"):
        plan_offsets([step, -step])
    with pytest.raises(PlanError, match="needs more than 1 expansions"):
        plan_offsets([np.random.default_rng(0).random(64)] * 5, max_calls=1)
