"""Space sharing by memory profiles: the pairs admitted are exactly those brute force finds."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.cluster.colocation import CoLocation, _stretch
from weft.cluster.model import ClusterError
from weft.cluster.throughputs import ThroughputTable

TYPES = ["v100", "k80"]


def _stretch_brute(p, period, common, bins):
    """Exact (fractions): bin k's max over profile bins whose interval meets [k, k+1)·common/bins,
    and the value held after the step (p[-1]) where the bin reaches past it."""
    n, out = len(p), []
    for k in range(bins):
        c0, c1 = Fraction(k) * common / bins, Fraction(k + 1) * common / bins
        vals = [p[i] for i in range(n) if Fraction(i) * period / n < c1
                and Fraction(i + 1) * period / n > c0]
        if c1 > period:
            vals.append(p[-1])
        out.append(max(vals))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=7), st.integers(1, 6),
       st.integers(1, 6), st.integers(1, 9))
def test_stretch_equals_interval_brute_force(p, ta, tb, bins):
    period, common = Fraction(1, max(ta, tb)), Fraction(1, min(ta, tb))  # slower step: longer
    got = _stretch(np.array(p, float), float(period), float(common), bins)
    assert got.tolist() == [float(v) for v in _stretch_brute(p, period, common, bins)]


def _table(rates, pairs=None):
    iso = {(name, 1): np.array(r, float) for name, r in rates.items()}
    return ThroughputTable(TYPES, iso, pairs or {})


def _brute_pair_peaks(co, ka, kb, table, j):
    """Every offset of b against a, in plain loops: (best combined peak, gang peak)."""
    sa, sb = 1 / table.iso[ka][j], 1 / table.iso[kb][j]
    common = max(sa, sb)
    a = _stretch(co.profiles[ka[0]], sa, common, co.bins).tolist()
    b = _stretch(co.profiles[kb[0]], sb, common, co.bins).tolist()
    n = len(a)
    peaks = [max(a[t] + b[(t - o) % n] for t in range(n)) for o in range(n)]
    return min(peaks), peaks[0]


profiles = st.lists(st.integers(1, 10), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(st.lists(profiles, min_size=2, max_size=4), st.lists(st.integers(1, 4), min_size=8,
       max_size=8), st.integers(4, 16), st.integers(2, 8),
       st.sampled_from(["offset", "gang"]), st.sampled_from(["skip", "median"]))
def test_pairs_admitted_are_exactly_those_that_fit(profs, speeds, mem, bins, rule, unmeasured):
    names = [f"job{i}" for i in range(len(profs))]
    rates = {n: (speeds[2 * i], speeds[2 * i + 1]) for i, n in enumerate(names)}
    # one measured pair (job0, job1) on both types; the rest unmeasured
    measured = {(("job0", 1), ("job1", 1)): np.array([[0.7, 0.6], [0.5, 0.4]])}
    table = _table(rates, measured)
    co = CoLocation({n: np.array(p, float) for n, p in zip(names, profs)},
                    {"v100": float(mem), "k80": float(mem) / 2}, rule=rule, bins=bins,
                    unmeasured=unmeasured)
    out = co.table(table)
    share = {}
    for j, t in enumerate(TYPES):
        m = measured[(("job0", 1), ("job1", 1))][j]
        share[t] = float(np.median([m[0] / rates["job0"][j], m[1] / rates["job1"][j]]))
    for ia, a in enumerate(names):
        for b in names[ia:]:
            ka, kb = (a, 1), (b, 1)
            got = out.pair_row(ka, kb)
            for j, t in enumerate(TYPES):
                best, gang = _brute_pair_peaks(co, ka, kb, table, j)
                assert co.pair_peaks(ka, kb, table, t) == pytest.approx((best, gang))
                fits = (best if rule == "offset" else gang) <= co.memory[t]
                if (a, b) == ("job0", "job1"):
                    want = measured[(ka, kb)][j] if fits else [0, 0]
                elif fits and unmeasured == "median":
                    want = [rates[a][j] * share[t], rates[b][j] * share[t]]
                else:
                    want = [0, 0]
                row = got[j] if got is not None else np.zeros(2)
                assert row == pytest.approx(want), (a, b, t, best, gang, co.memory[t])
                back = out.pair_row(kb, ka)
                if got is not None:
                    assert back[j] == pytest.approx(row[::-1])


def test_offset_admits_what_gang_does_not():
    # two jobs whose peaks are half a step apart fit 10 with offsets, not when gang-launched
    prof = np.array([8.0, 2.0, 2.0, 2.0])
    table = _table({"a": (1, 1), "b": (1, 1)})
    for rule, pairs in (("offset", 3), ("gang", 0)):
        co = CoLocation({"a": prof, "b": prof}, {"v100": 10.0, "k80": 10.0}, rule=rule, bins=4,
                        unmeasured="median")
        # nothing measured: median share 0 -> no throughput; so give one measured pair
        out = co.table(ThroughputTable(TYPES, table.iso,
                                       {(("a", 1), ("b", 1)): np.array([[0.6, 0.6]] * 2)}))
        assert sum(1 for (ka, kb) in out.pair if ka <= kb) == pairs, rule
    summary = CoLocation({"a": prof, "b": prof}, {"v100": 10.0}, bins=4).summary(table)
    assert summary == {"v100": {"pairs": 3, "fit_gang": 0, "fit_offset": 3, "measured": 0}}


def test_load_reads_profiles_and_names_bad_fields(tmp_path):
    from weft.planner.memprofile import MemoryProfile

    MemoryProfile([0.0, 0.5], [4.0, 1.0], 1.0).save(tmp_path / "a.json")
    good = {"format": "weft.colocation/1", "memory": {"v100": "1KiB"},
            "profiles": {"a": "a.json", "b": {"bins": [1, 2, 3]}}}
    (tmp_path / "c.json").write_text(json.dumps(good))
    co = CoLocation.load(tmp_path / "c.json", bins=8)
    assert co.memory == {"v100": 1024.0}
    assert co.profiles["a"].tolist() == [4.0] * 4 + [1.0] * 4
    assert co.profiles["b"].tolist() == [1, 2, 3]
    bad = [({"format": "x"}, "format"), ({"memory": {}}, "memory"),
           ({"memory": {"v100": "lots"}}, "memory.v100"),
           ({"profiles": {"a": "missing.json"}}, "profiles.a"),
           ({"profiles": {"a": {"bins": ["x"]}}}, "profiles.a.bins"),
           ({"profiles": {"a": 3}}, "profiles.a")]
    for change, field in bad:
        (tmp_path / "bad.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(ClusterError, match=f"bad.json.*{field}"):
            CoLocation.load(tmp_path / "bad.json")
    for kw in ({"rule": "both"}, {"unmeasured": "guess"}):
        with pytest.raises(ClusterError):
            CoLocation({"a": np.ones(2)}, {"v100": 1.0}, **kw)
    with pytest.raises(ClusterError, match="v100"):
        CoLocation({"a": np.ones(2)}, {"v100": math.nan})


def test_simulate_packs_only_pairs_that_fit(tmp_path, capsys, gavel_dir):
    """`weft cluster simulate --colocation`: each packed policy under both rules; every pair
    the offset run space-shares fits that accelerator's memory, the gang run shares none
    (each job's peak alone is 0.8 of the memory)."""
    from weft.cli import main

    table = ThroughputTable.load(gavel_dir / "simulation_throughputs.json", ["v100", "p100", "k80"])
    peaky = [8.0] + [2.0] * 7
    spec = {"format": "weft.colocation/1", "memory": {"v100": 10, "p100": 10, "k80": 10},
            "profiles": {name: {"bins": peaky} for name in table.job_types()}}
    path = tmp_path / "co.json"
    path.write_text(json.dumps(spec))
    argv = ["cluster", "simulate", "--jobs", "12", "--rate", "0", "--cluster", "1:1:1",
            "--gavel-dir", str(gavel_dir), "--policy", "max_min_fairness",
            "--policy", "max_min_fairness_packed", "--colocation", str(path), "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "co-location rule offset:" in out and "co-location rule gang: v100: 0/" in out
    res = json.loads((tmp_path / "o" / "results.json").read_text())["results"]
    assert [r["policy"] for r in res] == [
        "max_min_fairness", "max_min_fairness_packed [offset co-location]",
        "max_min_fairness_packed [gang co-location]"]
    assert "shared_leases" not in res[0] or res[0]["shared_leases"] == []
    offset, gang = res[1]["shared_leases"], res[2]["shared_leases"]
    assert gang == [] and offset, (offset, gang)
    co = CoLocation.load(path)
    for a, b, accel, n in offset:
        assert co.fits((a, 1), (b, 1), table, accel) and n > 0
    # errors: exit 2, one line, nothing written
    for extra, msg in ((["--policy", "fifo"], "needs a packed policy"),):
        bad = argv[:8] + ["--gavel-dir", str(gavel_dir), "--colocation", str(path), "--no-progress",
                          "--out", str(tmp_path / "bad")] + extra
        assert main(bad) == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
    spec["memory"]["v100"] = "lots"
    path.write_text(json.dumps(spec))
    assert main(argv + ["--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("weft: error:") and "memory.v100" in err
    assert not (tmp_path / "bad").exists()
