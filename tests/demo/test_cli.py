"""`weft demo`: the data-parallel demo end to end, any accuracy reported with exit 0, and the
adaptive demo (`--adaptive --kill`) run for real."""

import json

import pytest

from weft.cli import main


def test_demo_reaches_accuracy_and_writes_report(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--ranks", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    [run] = list(tmp_path.iterdir())
    report = json.loads((run / "report.json").read_text())
    assert report["test_accuracy"] >= 0.95
    assert report["samples_per_second"] > 0 and report["config"]["ranks"] == 4
    assert len(report["losses"]) == report["steps"]
    assert report["losses"][-1] < report["losses"][0] / 10
    assert (run / "loss.png").stat().st_size > 1000
    assert "test accuracy" in out


def test_a_short_demo_exits_0_and_says_its_accuracy(tmp_path, capsys):
    # issue 14, item 5: a hard-coded 95% pass mark made a demo that trained as asked exit 1.
    rc = main(["demo", "--out", str(tmp_path), "--ranks", "2", "--epochs", "1", "--batch", "512",
               "--backend", "ddp"])
    out = capsys.readouterr().out
    [run] = list(tmp_path.iterdir())
    report = json.loads((run / "report.json").read_text())
    assert report["test_accuracy"] < 0.95  # the case: 3 steps do not reach the usual mark
    assert rc == 0, out
    assert f"test accuracy {report['test_accuracy']:.2%}" in out


@pytest.mark.slow
def test_adaptive_demo_with_a_killed_worker_runs(tmp_path, capsys):
    # issue 14, item 1: `weft demo --adaptive [--kill]` crashed (AttributeError: 'Namespace'
    # object has no attribute 'nnodes') and left an empty run folder.
    rc = main(["demo", "--adaptive", "--kill", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    [run] = list(tmp_path.iterdir())
    report = json.loads((run / "report.json").read_text())
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kinds = [(e["step"], e["kind"]) for e in report["events"]]
    assert (30, "resize") in kinds and (60, "resize") in kinds and (45, "rejected") in kinds
    assert any(k == "switch" for _, k in kinds)  # SMA -> S-SGD on the noise scale
    (fail,) = [e for e in report["events"] if e["kind"] == "failure"]
    assert fail["step"] == 80 and fail["lost"] == [1]
    assert report["dead_workers"] == [1]
    assert report["workers_final"] == 2 and report["replicas_identical"]
    assert "adaptation events" in out and f"{run}/report.json" in out
