"""The `weft` command: version and help, topology show/save, errors and exit codes, `weft train`
choosing its mode."""

import subprocess
import sys

import pytest

from weft.cli import main


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


def test_train_dispatches_by_mode(tmp_path, capsys):
    assert main(["train"]) == 2  # neither --plan nor --policy
    bad = tmp_path / "p.yaml"
    bad.write_text("policies: [{no_such_policy: {}}]\n")
    assert main(["train", "--policy", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(["train", "--plan", str(tmp_path / "missing.json")]) == 2


@pytest.mark.parametrize("argv, needle", [
    (["demo", "--batch", "0"], "--batch: must be >= 1"),
    (["demo", "--batch", "62"], "--batch 62: must be a multiple of --ranks 4"),
    (["demo", "--epochs", "0"], "--epochs: must be >= 1"),
    (["cluster", "simulate", "--pop", "0"], "--pop: must be >= 1"),
    (["cluster", "simulate", "--rate", "-1"], "--rate: must be >= 0"),
])
def test_bad_values_are_caught_before_any_rank_starts(argv, needle, tmp_path, monkeypatch, capsys):
    # issue 14: these used to start ranks (25-40 s) and end in a rank's traceback, or be
    # accepted silently
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
