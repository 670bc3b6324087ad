"""The README and docs cannot drift from the code (issue 14).

Every `weft ...` command line written in README.md or docs/*.md (in a shell block or in
backquotes) is parsed by the real parser, with its files present; every option a sentence
names (`weft train --save`) exists on that command. The README's command table is then run,
in order, in a scratch folder, with small-size options appended (argparse keeps the last
value); a command another test runs is listed in COVERED with that test, one that cannot run
here in NOT_RUN with the reason. tests/test_docs_run.py runs the docs' command lines.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import torch

from weft.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Placeholders the docs use for things a reader fills in.
PLACEHOLDERS = {"P": "examples/policy.yaml", "PLAN": "examples/plans/dp.yaml",
                "MIN:MAX": "1:2", "HOST:29500": "127.0.0.1:29500", "node0:29400": "127.0.0.1:29400",
                "<pipeline plan>": "plan.json"}

# README commands another test runs (the test named here), because they take minutes.
COVERED = {
    "weft demo": "tests.demo.test_cli::test_demo_reaches_accuracy_and_writes_report",
    "weft demo --adaptive [--kill]": "tests.demo.test_cli::test_adaptive_demo_with_a_killed_worker_runs",
    # the same lines in docs/adapt.md and docs/cluster.md (the multi-node one as one node)
    "weft train --policy P --nnodes 1:4 --nproc-per-node 2 --rdzv-endpoint node0:29400":
        "tests.test_docs_run::test_doc_commands_run",
    "weft cluster run examples/cluster/cluster.yaml examples/cluster/jobs.yaml":
        "tests.test_docs_run::test_doc_commands_run",
    "weft train --policy examples/elastic.yaml --model examples/gpt_spec.py":
        "tests.test_docs_run::test_doc_commands_run",
    "weft cluster simulate ...": "tests.test_docs_run::test_doc_commands_run",
    # a server runs until stopped: that test starts this line with --port 0 and SIGTERMs it
    "weft serve run bundle/ --workers 2 --port 8000":
        "tests.serve.test_cli::test_run_serves_until_sigterm",
}
NOT_RUN: dict[str, str] = {}   # README commands that cannot run here, with why: none at present
# Small sizes for the README commands that are run here.
SMALL = {"weft train --plan": ["--max-steps", "2"], "weft serve decompose": ["--steps", "4"],
         "weft plan auto": ["--repeats", "1", "--place-budget", "0.5"],
         "weft train --policy": ["--max-steps", "6"]}


def _lines(text: str, table_is_commands: bool) -> list[tuple[str, bool]]:
    """(command, complete): shell-block lines and README table rows are complete command
    lines; a `weft ...` in a sentence may name a command and some options only."""
    found = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):  # every fence pairs
        if lang not in ("", "sh", "bash", "console", "shell"):
            continue
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("weft "):
                found.append((line, True))
    found += [(c, False) for c in re.findall(r"(?<!\| )`(weft [^`]+)`", text)]
    found += [(c, table_is_commands) for c in re.findall(r"^\| `(weft [^`]+)` \|", text, re.M)]
    return [(re.sub(r"\s+", " ", c.replace("\\|", "|")).strip(), full) for c, full in found]


def documented() -> list[tuple[str, str, bool]]:
    return [(p.name, c, full) for p in DOCS for c, full in dict.fromkeys(_lines(p.read_text(), p.name == "README.md"))]


def readme_table() -> list[str]:
    rows = re.findall(r"^\| `(weft [^`]+)` \|", (ROOT / "README.md").read_text(), re.M)
    return [re.sub(r"\s+", " ", r) for r in rows]


def _argv(cmd: str) -> list[str]:
    for k, v in PLACEHOLDERS.items():
        cmd = re.sub(rf"(?<![\w:/.-]){re.escape(k)}(?![\w:/.-])", v, cmd)
    return shlex.split(cmd)[1:]


def _subparser(argv: list[str]):
    """The (sub)parser the leading words of argv name, and a word that names no command."""
    parser = build_parser()
    for w in argv:
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs or w.startswith("-"):
            return parser, None
        if w not in subs[0].choices:
            return parser, w
        parser = subs[0].choices[w]
    return parser, None


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    """A folder with the repo's examples and the files documented commands read."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _make_inputs(folder: Path, argv: list[str]) -> None:
    """Empty stand-ins for files an earlier documented command writes (parsing checks only
    that they exist)."""
    for a in argv:
        if re.fullmatch(r"[\w.-]+\.(json|pt|yaml)", a) and not (folder / a).exists():
            (folder / a).write_text("{}")
        if a == "bundle/":
            (folder / "bundle").mkdir(exist_ok=True)


@pytest.mark.parametrize("doc,cmd,complete", documented(), ids=str)
def test_documented_command_parses(doc, cmd, complete, scratch):
    argv = [a for a in _argv(cmd) if a not in ("...", "[", "]")]
    parser, missing = _subparser(argv)
    assert missing is None, f"{doc}: `{cmd}`: {parser.prog} has no command {missing!r}"
    if not complete or "..." in cmd or "[" in cmd:   # names a command and some of its options
        known = {s for a in parser._actions for s in a.option_strings}
        for opt in (a.strip("[]") for a in argv if a.lstrip("[").startswith("--")):
            assert opt in known, f"{doc}: `{cmd}`: {parser.prog} has no option {opt}"
        return
    _make_inputs(scratch, argv)
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{cmd}` does not parse (exit {exc.code})")


def test_readme_table_is_found_and_every_row_is_run_somewhere():
    rows = readme_table()
    assert len(rows) >= 15 and "weft version" in rows
    for row in rows:
        if row in COVERED:
            module, name = COVERED[row].split("::")
            assert hasattr(importlib.import_module(module), name), COVERED[row]
    assert set(COVERED) | set(NOT_RUN) <= set(rows)   # no stale entries


def _small(cmd: str) -> list[str]:
    return [o for prefix, opts in SMALL.items() if cmd.startswith(prefix) for o in opts]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_commands_run(scratch, capsys):
    # serve decompose reads a trained classifier saved as model.pt (docs/serve.md)
    from weft.serve.testbed import digits_resnet

    torch.manual_seed(0)
    torch.save(digits_resnet(width=4), scratch / "model.pt")
    ran = []
    for row in readme_table():
        if row in COVERED or row in NOT_RUN or "..." in row:
            continue
        argv = _argv(row) + _small(row)
        rc = main(argv)
        out = capsys.readouterr()
        assert rc == 0, f"`{row}` exited {rc}:\n{out.err[-2000:]}"
        ran.append(row)
    assert (scratch / "dgx1.png").exists() and (scratch / "cluster.yaml").exists()
    assert (scratch / "plan.json").exists() and (scratch / "bundle").is_dir()
    assert len(ran) >= 9, ran
