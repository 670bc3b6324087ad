"""Per-regime factors of the collectives' cost model (one piece vs pipelined, per
algorithm), and the autotuner's measured shortlist (one entry per algorithm family)."""

from dataclasses import replace

import pytest

from weft.collectives import autotune
from weft.collectives.autotune import choose, family, ranked, schedule_for, shortlist
from weft.collectives.costmodel import CostParams, fit, fit_scales, pieces_for, predict
from weft.collectives.emulate.shapes import star_slow
from weft.collectives.fabric import Fabric

TRUE = CostParams(alpha=8e-5, reduce_bw=8e9, step_overhead=9e-5, cores=2.0, copy_bw=6e9)


@pytest.fixture(scope="module")
def loopback():
    return Fabric(star_slow(4, fast=1e12, slow=1e12), [f"h{i}" for i in range(4)])


def test_a_scale_applies_to_its_regime_and_falls_back_to_the_family(loopback):
    ring = schedule_for(loopback, "allreduce", "ring")
    two = schedule_for(loopback, "allreduce", "packing:2")
    size = 8 << 20
    assert pieces_for(ring, size, 16 << 20) == 1 and pieces_for(ring, size, 64 << 10) > 1
    p = replace(TRUE, scales=(("ring/whole", 2.0), ("packing/whole", 1.5),
                              ("packing:2/pieces", 0.5), ("packing/pieces", 3.0)))
    assert predict(ring, loopback, size, 16 << 20, p) == pytest.approx(
        2.0 * predict(ring, loopback, size, 16 << 20, TRUE))
    assert predict(ring, loopback, size, 64 << 10, p) == pytest.approx(  # no ring/pieces
        predict(ring, loopback, size, 64 << 10, TRUE))
    assert predict(two, loopback, size, 16 << 20, p) == pytest.approx(  # the family's
        1.5 * predict(two, loopback, size, 16 << 20, TRUE))
    assert predict(two, loopback, size, 64 << 10, p) == pytest.approx(  # its own first
        0.5 * predict(two, loopback, size, 64 << 10, TRUE))


def _samples(fabric, factor):
    """Runs timed as the TRUE model times `factor(algorithm, pieces)`."""
    out = []
    for alg in ("ring", "dbtree", "flat", "packing:1", "packing:4"):
        s = schedule_for(fabric, "allreduce", alg)
        for size in (512 << 10, 8 << 20):
            for chunk in (16 << 10, 64 << 10, 256 << 10, 2 << 20, 16 << 20):
                t = predict(s, fabric, size, chunk, TRUE) * factor(alg, pieces_for(s, size, chunk))
                out.append((s, fabric, size, chunk, t))
    return out


def test_fit_recovers_known_per_regime_factors(loopback):
    want = {"flat/whole": 1.3, "ring/whole": 0.8}

    def factor(alg, pieces):
        return want.get(f"{alg}/{'whole' if pieces == 1 else 'pieces'}", 1.0)
    samples = _samples(loopback, factor)
    plain, plain_err = fit(samples, replace(TRUE, alpha=1e-5, copy_bw=2e9))
    got, err = fit(samples, replace(TRUE, alpha=1e-5, copy_bw=2e9), per_regime=True)
    assert plain_err > 0.05 and err < plain_err / 3
    table = dict(got.scales)
    # the shared terms absorb part of a factor; their ratio is what one set cannot fit
    assert table["flat/whole"] / table["ring/whole"] == pytest.approx(1.3 / 0.8, rel=0.08)
    assert table["packing:4/pieces"] == pytest.approx(table["ring/pieces"], rel=0.08)
    # fit_scales alone, on the true shared terms, finds the factors themselves
    exact, exact_err = fit_scales(samples, TRUE)
    assert exact_err < 1e-9
    assert dict(exact.scales)["flat/whole"] == pytest.approx(1.3)
    assert dict(exact.scales)["dbtree/pieces"] == pytest.approx(1.0)


def test_fit_scales_rejects_bad_input(loopback):
    s = schedule_for(loopback, "allreduce", "ring")
    with pytest.raises(ValueError, match="positive time"):
        fit_scales([(s, loopback, 1 << 20, 1 << 20, 0.0)], TRUE)
    with pytest.raises(ValueError, match="at least one"):
        fit_scales([], TRUE)
    with pytest.raises(ValueError, match="min_samples"):
        fit_scales([(s, loopback, 1 << 20, 1 << 20, 1e-3)], TRUE, min_samples=0)


def test_shortlist_holds_each_familys_best_in_the_models_order(loopback):
    r = ranked(loopback, "allreduce", 4 << 20, params=TRUE)
    top = shortlist(r, 4)
    fams = [family(c.algorithm) for c in top]
    assert sorted(fams) == ["dbtree", "flat", "packing", "ring"]
    for c in top:  # each is its family's first entry in the ranking
        assert c is next(x for x in r if family(x.algorithm) == family(c.algorithm))
    assert [c.predicted for c in top] == sorted(c.predicted for c in top)
    assert shortlist(r, 2) == top[:2]
    with pytest.raises(ValueError, match="at least one"):
        shortlist(r, 0)


def test_measured_choice_is_the_measured_best_of_the_shortlist(loopback, monkeypatch):
    monkeypatch.setattr(autotune, "_CHOICES", {})
    size = 4 << 20
    r = ranked(loopback, "allreduce", size, params=TRUE)
    top = shortlist(r, 4)
    # synthetic costs: the model's order reversed, so its own best is the worst
    truth = {(c.algorithm, c.chunk_bytes): 1.0 / c.predicted for c in top}
    timed = []

    def measure(c):
        timed.append(c.algorithm)
        return truth[c.algorithm, c.chunk_bytes]
    got = choose(loopback, "allreduce", size, params=TRUE, measure=measure, top=4)
    assert (got.algorithm, got.chunk_bytes) == min(truth, key=truth.get)
    assert got.algorithm != r[0].algorithm and len(timed) == 4
    plain = choose(loopback, "allreduce", size, params=TRUE)  # unmeasured: the model's best
    assert (plain.algorithm, plain.chunk_bytes) == (r[0].algorithm, r[0].chunk_bytes)
