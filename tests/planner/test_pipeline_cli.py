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


SMALL = """import torch
from torch import nn


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long())
    return data, data
"""


def _pipeline_plan(tmp_path) -> Path:
    """A 2-stage plan of a 5-layer MLP on its own 64 random samples, written by hand: no
    profiling, no dataset to load."""
    from weft.parallel.pipeline import from_boundaries

    (tmp_path / "small.py").write_text(SMALL)
    plan = from_boundaries([(0, 2), (2, 5)], model=f"{tmp_path / 'small.py'}:model",
                           micro_batch=4, microbatches=4, method="equal")
    return plan.save(tmp_path / "plan.json")


def test_train_schedule_ticktock_equals_one_process(tmp_path, capsys, monkeypatch):
    """`weft train --plan P --schedule ticktock`: 2 ranks, 3 steps of 4 micro-batches, stage 0
    runs the tick-tock order, and the parameters equal one process training on each whole
    batch (SGD, momentum 0.9, lr 0.05: the runtime's defaults) within 1e-5."""
    import torch

    import weft.launch
    from weft.model_spec import extra, load_model

    plan, real, runs = _pipeline_plan(tmp_path), weft.launch.launch, []
    monkeypatch.setattr("weft.launch.launch", lambda *a, **k: runs.append(real(*a, **k)) or runs[-1])
    assert main(["train", "--plan", str(plan), "--max-steps", "3", "--schedule", "ticktock",
                 "--timeline", str(tmp_path / "tl.png")]) == 0
    out = capsys.readouterr().out
    assert "schedule ticktock, 4 micro-batches of 4" in out and "48 samples in" in out
    [results] = runs
    # stage 0's first step: the second wave's forwards between the first wave's backwards
    # (1f1b would run F0 F1 B0 F2 B1 F3 B2 B3)
    rank0 = next(r for r in results if r["rank"] == 0)
    assert [f"{e[1]}{e[2]}" for e in rank0["events"] if e[1] in ("F", "B")][:8] == \
        ["F0", "F1", "F2", "B0", "F3", "B1", "B2", "B3"]
    spec = f"{tmp_path / 'small.py'}:model"
    net = load_model(spec)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = extra(spec, "dataset")()[0][:]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:48]  # epoch 0
    for xb, yb in zip(x[perm].split(16), y[perm].split(16)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()
    got = {layer: sd for r in results for layer, sd in r["state"].items()}
    assert sorted(got) == list(range(5))
    for layer, module in enumerate(net):
        for name, want in module.state_dict().items():
            assert torch.allclose(torch.from_numpy(got[layer][name]), want, rtol=0, atol=1e-5), \
                (layer, name)


def test_train_bad_schedule_exits_2_before_any_rank_starts(tmp_path, capsys, monkeypatch):
    def started(*a, **k):
        raise AssertionError("a rank was started")

    monkeypatch.setattr("weft.launch.launch", started)
    assert main(["train", "--plan", str(_pipeline_plan(tmp_path)), "--schedule", "zigzag"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("weft: error: --schedule 'zigzag': choose one of") and "ticktock" in err
