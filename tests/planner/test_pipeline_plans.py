"""Plans that survive real use: the model file recorded absolute with its hash (a warning when
it changed), a model file importing its neighbour, `package.module:attr` specs, split points
and fixed stage counts from the command line, shared parameters reported."""

import json
import warnings

import pytest

from weft.cli import main
from weft.model_spec import fingerprint
from weft.parallel.pipeline import PipelinePlan
from weft.parallel.pipeline.stages import ModelChangedWarning

NET = '''import torch
from torch import nn
from net_parts import Block


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, x):
        h = self.emb(x)
        for blk in self.blocks:
            h = blk(h)
        return self.head(h).mean(1)


def model():
    torch.manual_seed(0)
    return Net()


def example_input(batch_size):
    return torch.randint(0, 16, (batch_size, 4))


def loss_fn(out, y):
    return nn.functional.cross_entropy(out, y)


def dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 16, (64, 4), generator=g)
    data = torch.utils.data.TensorDataset(x, x[:, 0])
    return data, data
'''
PARTS = '''import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.act(self.lin(x))
'''


@pytest.fixture
def project(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "net.py").write_text(NET)
    (proj / "net_parts.py").write_text(PARTS)  # imported by net.py: its folder is importable
    return proj


def plan_args(tmp_path, *extra):
    return ["plan", "pipeline", "--topology", "multi_node:1x4", "--micro-batch", "4",
            "--microbatches", "2", "--cache-dir", str(tmp_path / "cache"), *extra]


def test_split_points_plan_records_absolute_model_and_reports_the_tied_weight(
        project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert main(plan_args(tmp_path, "--model", "net.py", "--split-points", "blocks.1,head",
                          "--out", "plan.json")) == 0
    out = capsys.readouterr().out
    assert "split points pipeline plan: 6 layers on 3 workers" in out
    assert "shared parameter emb.weight = head.weight" in out
    assert "summed over ranks 0,2 every step" in out
    d = json.loads((project / "plan.json").read_text())
    assert d["model"] == f"{project / 'net.py'}:model"
    assert d["model_hash"] == fingerprint(str(project / "net.py"))
    assert d["split_points"] == ["blocks.1", "head"]
    assert [s["layers"] for s in d["stages"]] == [[0, 2], [2, 4], [4, 6]]
    assert d["extra"]["shared"][0]["stages"] == [0, 2]

    monkeypatch.chdir(tmp_path)  # elsewhere: the plan still finds its model, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = PipelinePlan.load(project / "plan.json")
    assert plan.model_changed() is None
    (project / "net.py").write_text(NET + "\n# edited after planning\n")
    with pytest.warns(ModelChangedWarning, match="changed since this plan was made"):
        PipelinePlan.load(project / "plan.json")

    d["model"] = "net.py"  # an older plan with a relative path, next to the model file
    (project / "old.json").write_text(json.dumps(d))
    with pytest.warns(ModelChangedWarning):
        assert PipelinePlan.load(project / "old.json").model == str(project / "net.py")


def test_fixed_stage_count_and_module_specs(tmp_path, capsys):
    assert main(plan_args(tmp_path, "--model", "weft.demo.models:digits_mlp", "--input-shape",
                          "64", "--stages", "3", "--out", str(tmp_path / "p.json"))) == 0
    d = json.loads((tmp_path / "p.json").read_text())
    assert d["model"] == "weft.demo.models:digits_mlp" and d["model_hash"] is None
    assert len(d["stages"]) == 3 and all(s["replicas"] == 1 for s in d["stages"])
    assert "optimal 3-stage pipeline plan" in capsys.readouterr().out
    assert main(plan_args(tmp_path, "--model", "weft.demo.models:digits_mlp", "--input-shape",
                          "64", "--stages", "2", "--workers", "3")) == 2
    assert "2 stages of one worker each use 2 workers" in capsys.readouterr().err
    assert main(plan_args(tmp_path, "--model", "weft.demo.models:digits_mlp", "--input-shape",
                          "64", "--split-points", "9")) == 2
    assert "split point '9' names no module" in capsys.readouterr().err


def test_plan_by_split_points_is_resolved_against_the_model(project):
    from weft.model_spec import load_model
    from weft.parallel.pipeline.layers import as_sequential

    plan = PipelinePlan.from_dict({"format": "weft.pipeline-plan/1", "split_points": ["blocks.2"],
                                   "model": str(project / "net.py")})
    assert plan.workers == 2 and not plan.resolved
    with pytest.raises(Exception, match="resolve it against the model first"):
        plan.boundaries()
    plan.resolve(as_sequential(load_model(str(project / "net.py"))))
    assert plan.boundaries() == [(0, 3), (3, 6)]
    again = PipelinePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.boundaries() == [(0, 3), (3, 6)] and again.split_points == ["blocks.2"]


def test_train_plan_from_another_directory(project, tmp_path, monkeypatch, capsys):
    """Planned in the model's folder, trained from elsewhere on 2 ranks: the model file (which
    imports its neighbour) is found, the tied weight is kept equal, throughput is printed
    next to the prediction."""
    from weft.parallel.pipeline.train import train_plan

    monkeypatch.chdir(project)
    assert main(plan_args(tmp_path, "--model", "net.py", "--split-points", "blocks.1",
                          "--out", "plan.json")) == 0
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    summary = train_plan(project / "plan.json", max_steps=3, timeout=60)
    out = capsys.readouterr().out
    assert summary["stages"] == 2 and summary["samples"] == 3 * 8
    assert "measured / predicted" in out and summary["predicted_samples_per_s"] > 0
    assert 0.0 <= summary["accuracy"] <= 1.0


@pytest.mark.slow
def test_readme_pipeline_example_reaches_the_demo_accuracy(tmp_path, capsys):
    """The README's commands: a 4-stage plan of examples/resnet.py (in-place ReLUs, batch
    norm), trained 4 epochs on 4 ranks: >= 95% test accuracy, predicted vs measured printed."""
    from pathlib import Path

    from weft.parallel.pipeline.train import train_plan

    example = Path(__file__).resolve().parents[2] / "examples" / "resnet.py"
    plan = tmp_path / "plan.json"
    assert main(["plan", "pipeline", "--model", str(example), "--topology", "multi_node:2x2",
                 "--stages", "4", "--micro-batch", "16", "--microbatches", "4", "--out",
                 str(plan), "--cache-dir", str(tmp_path)]) == 0
    assert len(json.loads(plan.read_text())["stages"]) == 4
    summary = train_plan(plan, epochs=4, timeout=120)
    assert summary["stages"] == 4 and summary["accuracy"] >= 0.95
    out = capsys.readouterr().out
    assert "measured / predicted" in out and "test accuracy" in out
