"""The `weft` command: demo end to end, topology show, errors and exit codes."""

import json
import subprocess
import sys

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


def test_version_and_help():
    r = subprocess.run([sys.executable, "-m", "weft.cli", "version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("weft ")
    r = subprocess.run([sys.executable, "-m", "weft.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("demo", "topology", "version"):
        assert cmd in r.stdout


def test_topology_show_draws(tmp_path, capsys):
    assert main(["topology", "show", "dgx1", "--out", str(tmp_path / "d.png"), "--links"]) == 0
    out = capsys.readouterr().out
    assert "dgx1: 8 gpu, 2 switch" in out and "nvlink" in out
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_topology_save_then_show(tmp_path, capsys):
    assert main(["topology", "save", "multi_node:2x2", str(tmp_path / "mn.yaml")]) == 0
    assert main(["topology", "show", str(tmp_path / "mn.yaml")]) == 0
    assert "2x2: 4 gpu" in capsys.readouterr().out


def test_bad_topology_exits_nonzero_with_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [{name: a}, {name: b}]\nlinks: [{src: a, dst: q, bandwidth: 1}]\n")
    assert main(["topology", "show", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: links[0].dst: unknown device 'q'" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("argv", [["demo", "--ranks", "0"], ["topology", "show", "torus"]])
def test_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "weft: error:" in capsys.readouterr().err
