"""The README's Quickstart script runs as written, on 2 local ranks, and shows progress
(issue 14: it printed nothing while it trained)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_readme_quickstart_runs_and_shows_progress(tmp_path):
    text = (ROOT / "README.md").read_text()
    script = re.search(r"```python\n(# train\.py\n.*?)```", text, re.S).group(1)
    assert "progress(loader" in script
    script = script.replace("def main(epochs=5):", "def main(epochs=1):")
    script = script.replace("nprocs=4", "nprocs=2")
    (tmp_path / "train.py").write_text(script)
    out = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("epoch 0") == 1, out.stdout      # one rank draws the bar
    assert re.search(r"epoch 0 .* (\d+)/\1 ", out.stdout), out.stdout     # the bar reached its end
