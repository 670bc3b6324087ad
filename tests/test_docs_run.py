"""Every command line of docs/*.md runs (issue 14): the README's table is run by
tests/test_docs_commands.py; here each doc's shell-block commands are run in order, in a
scratch folder of their own, with small sizes appended (argparse keeps the last value).

A command the README test already runs, or another test runs whole, is named in COVERED
with that test; one that cannot run here is in NOT_RUN with the reason. Files a doc's
reader brings (their own model `net.py` and data `data.py`) are made first.
"""

from __future__ import annotations

import importlib
import re
import socket

import pytest

from tests.test_docs_commands import COVERED as README_COVERED
from tests.test_docs_commands import NOT_RUN as README_NOT_RUN
from tests.test_docs_commands import ROOT, _argv, _small, documented, readme_table
from weft.cli import main

COVERED = {
    "weft demo --adaptive": "tests.demo.test_cli::test_adaptive_demo_with_a_killed_worker_runs",
    "weft demo --adaptive --kill": "tests.demo.test_cli::test_adaptive_demo_with_a_killed_worker_runs",
    # a server runs until stopped: that test starts this line with --port 0 and SIGTERMs it
    "weft serve run bundle/ --workers 2 --port 8000":
        "tests.serve.test_cli::test_run_serves_until_sigterm",
}
NOT_RUN: dict[str, str] = {}   # none at present

# What a reader of that doc has made before its commands: their own model and data
# (docs/adapt.md).
NET = '''
import torch
from torch import nn


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def dataset():
    raise RuntimeError("--data data.py:load replaces this")


loss_fn = nn.functional.cross_entropy
'''
DATA = '''
import torch


def load():
    x = torch.randn(96, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x[:32], y[:32])
'''
PREPARE = {"adapt.md": {"net.py": NET, "data.py": DATA}}

SHARED = ROOT.parent / "shared"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doc_commands(doc: str) -> list[str]:
    """The complete command lines of one doc, in order, once each."""
    return [c for d, c, full in documented() if d == doc and full and "[" not in c
            and "..." not in c]


def _runs_elsewhere(cmd: str) -> str | None:
    if cmd in COVERED or cmd in NOT_RUN:
        return COVERED.get(cmd) or NOT_RUN[cmd]
    readme = set(readme_table()) - set(README_NOT_RUN) - set(README_COVERED)
    # a README row the README test runs, if no later line of its doc reads what it writes
    # (planner.md's `plan auto` writes the plan.yaml its next lines read: run here too)
    if cmd in readme and cmd.split()[1] in ("train", "profile", "serve"):
        return "run by tests/test_docs_commands.py::test_readme_commands_run"
    return None


# The docs with a command run here (serve.md's both run elsewhere).
DOCS = sorted(p.name for p in (ROOT / "docs").glob("*.md")
              if any(not _runs_elsewhere(c) for c in doc_commands(p.name)))


def test_every_doc_with_commands_is_run_and_covered_entries_exist():
    assert {"adapt.md", "cluster.md", "parallelize.md", "pipeline.md", "planner.md"} <= set(DOCS)
    every = {c for p in (ROOT / "docs").glob("*.md") for c in doc_commands(p.name)}
    assert set(COVERED) | set(NOT_RUN) <= every   # no stale entries
    for test in COVERED.values():
        module, name = test.split("::")
        assert hasattr(importlib.import_module(module), name), test


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("doc", DOCS)
def test_doc_commands_run(doc, tmp_path, monkeypatch, capsys):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    for name, text in PREPARE.get(doc, {}).items():
        (tmp_path / name).write_text(text)
    ran, skipped = [], []
    for cmd in doc_commands(doc):
        if _runs_elsewhere(cmd):
            continue
        line = cmd.replace("node0:29400", f"127.0.0.1:{_free_port()}")
        if "../shared/" in line or line.startswith("weft cluster simulate"):  # Gavel's data
            if not SHARED.is_dir():
                skipped.append(cmd)
                continue
            line = line.replace("../shared/", f"{SHARED}/")  # from the scratch folder
        argv = _argv(line) + _small(line)   # the README test's small sizes
        rc = main(argv)
        out = capsys.readouterr()
        assert rc == 0, f"{doc}: `{cmd}` exited {rc}:\n{out.err[-3000:]}"
        ran.append(cmd)
    assert ran, f"{doc}: no command was run"
    for out_file in re.findall(r"--out (\S+\.(?:png|json|yaml))", " ".join(ran)):
        assert (tmp_path / out_file).exists(), f"{doc}: {out_file} was not written"
    if skipped:
        pytest.skip(f"ran {len(ran)}; ../shared is absent for: {skipped}")
