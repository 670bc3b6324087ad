"""`weft collectives plan`."""

import json

from weft.cli import main


def test_plan_prints_trees_time_and_bound_and_draws(tmp_path, capsys):
    out = tmp_path / "trees.png"
    assert main(["collectives", "plan", "--topology", "dgx1", "--op", "broadcast", "--size",
                 "256MB", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "chosen: packing" in text and "max-flow bound" in text and "gpu0->" in text
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plan_json_is_consistent(capsys):
    assert main(["collectives", "plan", "--topology", "ring:4", "--op", "allreduce",
                 "--size", "64MB", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["bytes"] == 64 * 10**6 and d["predicted_s"] >= d["bound_s"] > 0
    assert d["candidates"][0]["algorithm"] == d["algorithm"]
    for t in d["trees"]:
        assert len(t["parent"]) == 3  # spanning trees over 4 ranks


def test_plan_bad_input(capsys):
    assert main(["collectives", "plan", "--op", "scatter"]) == 2
    assert "--op: 'scatter'" in capsys.readouterr().err
    assert main(["collectives", "plan", "--topology", "ring:4", "--devices", "gpu0,gpu9"]) == 2
    assert "gpu9" in capsys.readouterr().err
    assert main(["collectives", "plan", "--topology", "ring:4", "--size", "0"]) == 2
