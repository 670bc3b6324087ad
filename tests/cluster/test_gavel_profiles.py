"""The measured memory profiles shipped for Gavel's job types (examples/cluster/gavel/
profiles.json): complete, consistent with their own peaks and batch sizes, and every pair the
offset rule admits fits by brute force over launch offsets. And the script that makes them."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from weft.cluster.colocation import CoLocation, _stretch
from weft.cluster.throughputs import ThroughputTable

GAVEL = Path(__file__).resolve().parents[2] / "examples" / "cluster" / "gavel"
PROFILES = GAVEL / "profiles.json"
TYPES = ["v100", "p100", "k80"]


@pytest.fixture(scope="module")
def shipped(gavel_dir):
    table = ThroughputTable.load(gavel_dir / "physical_cluster_throughputs.json", TYPES)
    return table, CoLocation.load(PROFILES), json.loads(PROFILES.read_text())


def test_every_job_type_has_a_profile_or_says_why_not(shipped):
    table, co, raw = shipped
    missing = raw["conditions"].get("not_measured", {})
    for name in table.job_types():
        assert name in co.profiles or missing.get(name), name
    assert len(co.profiles) >= len(table.job_types()) - len(missing)
    assert set(co.memory) == set(TYPES)


def test_profiles_keep_their_peak_and_grow_with_the_batch(shipped):
    _, co, raw = shipped
    by_family: dict[str, list[tuple[int, float]]] = {}
    for name, entry in raw["profiles"].items():
        bins = co.profiles[name]
        assert len(bins) == raw["conditions"]["bins"]
        assert bins.max() == pytest.approx(entry["peak_bytes"], abs=1)  # max per bin keeps it
        assert entry["peak_bytes"] >= entry["baseline_bytes"] > 0
        m = re.fullmatch(r"(.+) \(batch size (\d+)\)", name)
        if m:
            assert int(m.group(2)) == entry["batch_size"]
            by_family.setdefault(m.group(1), []).append((entry["batch_size"], entry["peak_bytes"]))
    for family, pts in by_family.items():
        peaks = [p for _, p in sorted(pts)]
        assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks), (family, sorted(pts))


def test_offset_admits_what_gang_does_and_fits_by_brute_force(shipped):
    table, co, _ = shipped
    summary = co.summary(table)
    for t in TYPES:
        assert summary[t]["fit_gang"] <= summary[t]["fit_offset"] <= summary[t]["pairs"]
    keys = [k for k in table.keys if k[0] in co.profiles and k[1] == 1]
    checked = 0
    for j, t in enumerate(TYPES):
        for i, ka in enumerate(keys):
            for kb in keys[i:]:
                ta, tb = table.iso[ka][j], table.iso[kb][j]
                if ta <= 0 or tb <= 0:
                    continue
                common = max(1 / ta, 1 / tb)
                a = _stretch(co.profiles[ka[0]], 1 / ta, common, co.bins)
                b = _stretch(co.profiles[kb[0]], 1 / tb, common, co.bins)
                best = min((a + np.roll(b, o)).max() for o in range(len(b)))
                gang = (a + b).max()
                assert co.fits(ka, kb, table, t) == (best <= co.memory[t]), (ka, kb, t)
                assert co.pair_peaks(ka, kb, table, t) == pytest.approx((best, gang))
                checked += 1
    assert checked >= len(keys) * 2


TINY = '''
import torch
from torch import nn
model = lambda: nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 10))
loss_fn = nn.functional.cross_entropy
def example_batch(b):
    return torch.randn(b, 32), torch.randint(0, 10, (b,))
def optimizer(params):
    return torch.optim.Adam(params)
'''


def test_make_profiles_writes_a_loadable_file(tmp_path, monkeypatch):
    """The generator on a tiny stand-in spec: a file CoLocation loads, the peak at least the
    parameters, gradients and Adam's two moments (4 x params x 4 bytes), nothing for a family
    without a spec but a reason."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_profiles", GAVEL / "make_profiles.py")
    mp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mp)
    tiny = tmp_path / "tiny.py"
    tiny.write_text(TINY)
    thr = tmp_path / "thr.json"
    thr.write_text(json.dumps({"v100": {"('ResNet-18 (batch size 8)', 1)": {"null": 2.0},
                                        "('Nope (batch size 8)', 1)": {"null": 1.0}}}))
    out = tmp_path / "profiles.json"
    rc = mp.main(["--throughputs", str(thr), "--out", str(out), "--threads", "1",
                  "--spec", f"ResNet-18={tiny}"])
    assert rc == 1  # 'Nope' has no spec: reported, the rest written
    raw = json.loads(out.read_text())
    assert "Nope (batch size 8)" in raw["conditions"]["not_measured"]
    entry = raw["profiles"]["ResNet-18 (batch size 8)"]
    params = 32 * 256 + 256 + 256 * 10 + 10
    assert entry["params"] == params and entry["batch_size"] == 8
    assert entry["peak_bytes"] >= 4 * params * 4
    co = CoLocation.load(out)
    assert co.profiles["ResNet-18 (batch size 8)"].max() == entry["peak_bytes"]
