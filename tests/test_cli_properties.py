"""Every command's options are checked as they are parsed (issue 14).

The parser is walked, not listed by hand, so a new command is covered the day it is added:
- every numeric or path option uses one of weft.args' checked types (no bare int/float);
- for each checked option, malformed values (hypothesis) give exit 2, one line that starts
  with ``weft: error:`` and names the option, no traceback, and nothing written.
"""

from __future__ import annotations

import argparse
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weft.args as A
from weft.cli import build_parser, main


def leaf_commands(parser: argparse.ArgumentParser, path=()):
    """(command words, parser) of every command that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    seen = set()
    for sub in subs:
        for name, p in sub.choices.items():
            if id(p) in seen:  # an alias
                continue
            seen.add(id(p))
            yield from leaf_commands(p, path + (name,))


COMMANDS = list(leaf_commands(build_parser()))
OPTIONS = [(cmd, a) for cmd, p in COMMANDS for a in p._actions
           if a.option_strings and a.type is not None]

_words = st.text(alphabet="abcxyz%!@ ", min_size=1, max_size=6).map(lambda s: s.strip() or "x")
BAD = {
    A.positive_int: st.one_of(st.integers(max_value=0).map(str), st.sampled_from(
        ["1.5", "1e3", "two", ""]), _words),
    A.nonneg_int: st.one_of(st.integers(max_value=-1).map(str), st.sampled_from(["0.5", "x", ""])),
    A.positive_float: st.one_of(st.floats(max_value=0).map(repr),
                                st.sampled_from(["nan", "inf", "-inf", "fast", ""])),
    A.nonneg_float: st.one_of(st.floats(max_value=-1e-9).map(repr),
                              st.sampled_from(["nan", "inf", "slow", ""])),
    A.fraction: st.one_of(st.floats(min_value=1.0001, max_value=1e9).map(repr),
                          st.floats(max_value=0).map(repr), st.sampled_from(["nan", "half"])),
    A.port: st.one_of(st.integers(max_value=-1).map(str), st.integers(min_value=65536).map(str),
                      st.sampled_from(["http", "80.5", ""])),
    A.size: st.one_of(st.sampled_from(["lots", "-5MB", "0", "0GB", "5 apples", "nan"]),
                      st.integers(max_value=0).map(str)),
    A.output_file: st.sampled_from(["/proc/nope/out.json", "/proc/nope/deeper/x.png", "."]),
    A.output_dir: st.sampled_from(["/proc/nope/run", "/dev/null"]),
    A.existing_file: st.sampled_from(["/nonexistent/weft/file.yaml", "."]),
}


def test_every_numeric_or_path_option_is_checked():
    loose = [f"weft {' '.join(cmd)} {'/'.join(a.option_strings)} (type={a.type.__name__})"
             for cmd, a in OPTIONS if a.type in (int, float)]
    assert loose == [], "use a checked type from weft.args:\n" + "\n".join(loose)


CHECKED = [(cmd, a) for cmd, a in OPTIONS if a.type in BAD]


def test_the_walk_finds_the_commands():
    names = {" ".join(c) for c, _ in COMMANDS}
    assert {"collectives plan", "topology show", "demo"} <= names
    assert CHECKED, "no checked options found"


@pytest.mark.parametrize("cmd, action", CHECKED,
                         ids=[f"{' '.join(c)} {a.option_strings[-1]}" for c, a in CHECKED])
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_values_fail_in_one_line_and_write_nothing(cmd, action, data, tmp_path_factory,
                                                             capsys):
    value = data.draw(BAD[action.type], label="value")
    work = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(work)
    try:
        code = main([*cmd, action.option_strings[-1], value])
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (cmd, value, err)
    assert len(lines) == 1 and lines[0].startswith("weft: error: "), err
    assert any(o in lines[0] for o in action.option_strings), err
    assert "Traceback" not in err
    assert list(work.iterdir()) == []


# Commands that train, simulate or run jobs for more than a few seconds: each shows progress
# and takes --quiet (issue 14: "progress on every long command, quiet with --quiet").
LONG = [("demo",), ("train",), ("cluster", "simulate"), ("cluster", "run"), ("serve", "decompose")]


@pytest.mark.parametrize("cmd", LONG, ids=" ".join)
def test_long_commands_take_quiet(cmd):
    parser = dict(COMMANDS)[cmd]
    assert "--quiet" in {s for a in parser._actions for s in a.option_strings}
