"""The data-parallel overlap figure: its arithmetic, its probe model, a run on 2 ranks."""

import pytest

from weft.launch import launch
from weft.planner.dp_overlap import WIDTH, dp_overlap_rounds, hidden_fraction, probe_model


def test_hidden_fraction():
    # nothing hidden: the synced backward is the backward plus the whole sync
    assert hidden_fraction([0.030], [0.010], [0.020]) == pytest.approx(0.0, abs=1e-9)
    # all hidden: the sync costs the backward nothing; 20 ms of sync under 40 ms of backward
    assert hidden_fraction([0.040], [0.040], [0.020]) == pytest.approx(0.5)
    # the median over rounds, clipped to [0, 1]
    assert hidden_fraction([0.02, 0.02, 0.5], [0.01, 0.01, 0.01], [0.02, 0.02, 0.02]) == \
        pytest.approx(1.0)
    assert hidden_fraction([0.025, 0.03, 0.02], [0.01] * 3, [0.02] * 3) == pytest.approx(0.5)
    assert hidden_fraction([0.01], [0.001], [1.0]) == 1.0
    assert hidden_fraction([], [], []) == 0.0


@pytest.mark.parametrize("numel", [None, 50_000, 828_672, 10 << 20])
def test_probe_model_holds_about_the_parameters_asked_for(numel):
    n = sum(p.numel() for p in probe_model(numel).parameters())
    per = WIDTH * WIDTH + WIDTH
    if numel is None:
        assert n == 16 * per
    elif numel < 2 * per:
        assert n == 2 * per
    elif numel > 256 * per:
        assert n == 256 * per
    else:
        assert abs(n - numel) <= per / 2


def _run():
    return dp_overlap_rounds(200_000, repeats=2)


def test_the_probe_runs_on_two_ranks():
    """Every rank gets the same figures (the slowest rank's timings), the backward with
    its all-reduce and the sync alone took time, and the figure is a fraction."""
    a, b = launch(_run, 2, timeout=120)
    assert a == b
    assert a["dp_sync"] > 0 and a["dp_backward"] > 0 and a["dp_backward_sync"] > 0
    assert 0.0 <= a["dp_overlap"] <= 1.0
