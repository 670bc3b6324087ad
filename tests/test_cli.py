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
