"""Command-line arguments are checked as they are parsed: one line naming the option, exit 2."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["collectives", "plan", "--size", "lots"], "--size: cannot parse 'lots'"),
    (["collectives", "plan", "--size", "-5MB"], "--size: must be > 0"),     # was "expected one argument"
    (["collectives", "plan", "--algorithm", "packing:0"], "--algorithm: unknown algorithm 'packing:0'"),
    (["collectives", "plan", "--alpha", "-1"], "--alpha: must be >= 0"),
    (["collectives", "plan", "--root", "-2"], "--root: must be >= 0"),
    (["collectives", "plan", "--op", "scatter"], "--op: 'scatter'"),
    (["collectives", "plan", "--out", "/proc/nope/trees.png"], "--out: /proc/nope/trees.png: cannot write"),
    (["nope"], "invalid choice: 'nope'"),
])
def test_bad_arguments_fail_in_one_line(capsys, argv, needle):
    code, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("weft: error: ") and needle in lines[0], err


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=12).filter(lambda s: not s.startswith("--")))
def test_any_malformed_size_is_one_line_exit_2(value):
    from weft.args import size
    import argparse

    try:
        x = size(value)
    except argparse.ArgumentTypeError as exc:
        assert "\n" not in str(exc)
    else:
        assert x > 0


def test_version_flag_and_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "weft", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("weft ")
