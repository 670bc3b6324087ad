import json
from pathlib import Path

import pytest

from weft.cli import main
from weft.model_spec import fingerprint

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "mlp_digits.py")


@pytest.mark.slow
def test_plan_then_train(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    rc = main(["plan", "pipeline", "--model", EXAMPLE, "--topology",
               "multi_node:1x2", "--workers", "2", "--equal", "--micro-batch", "8",
               "--microbatches", "2", "--out", str(plan), "--cache-dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "equal-layers pipeline plan: 9 layers on 2 workers" in out and "samples/s" in out
    d = json.loads(plan.read_text())
    assert d["format"] == "weft.pipeline-plan/1" and d["model"] == EXAMPLE + ":model"
    assert d["model_hash"] == fingerprint(EXAMPLE)
    assert [s["layers"] for s in d["stages"]] == [[0, 4], [4, 9]]
    png = tmp_path / "tl.png"
    rc = main(["train", "--plan", str(plan), "--max-steps", "3", "--timeline", str(png)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "48 samples in" in out and "test accuracy" in out and "bubble" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plan_errors(tmp_path, capsys):
    assert main(["plan", "pipeline", "--topology", "ring:2"]) == 2
    assert "pass --model" in capsys.readouterr().err
    assert main(["plan", "pipeline", "--profile", "x.json", "--topology", "ring:2",
                 "--cpu-copy-bw", "fast"]) == 2
    assert "--cpu-copy-bw: cannot parse 'fast'" in capsys.readouterr().err
    assert main(["plan", "pipeline", "--model", "nope.py", "--topology", "ring:2"]) == 2
    assert "nope.py does not exist" in capsys.readouterr().err
    bad = tmp_path / "p.json"
    bad.write_text("{}")
    assert main(["train", "--plan", str(bad)]) == 2
    assert "not a weft pipeline plan" in capsys.readouterr().err


def test_plan_charges_action_overhead(tmp_path):
    base = ["plan", "pipeline", "--model", EXAMPLE, "--topology", "multi_node:1x2",
            "--workers", "2", "--equal", "--micro-batch", "8", "--microbatches", "2",
            "--cache-dir", str(tmp_path)]
    assert main(base + ["--out", str(tmp_path / "a.json")]) == 0
    assert main(base + ["--action-overhead", "0.001", "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    # equal layers, 2 stages of 4 actions per micro-batch, 2 micro-batches: + 8 ms each
    for sa, sb in zip(a["stages"], b["stages"]):
        assert sb["time_s"] - sa["time_s"] == pytest.approx(2 * 4 * 0.001, rel=1e-9)
