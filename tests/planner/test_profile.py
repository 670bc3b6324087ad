import json

import pytest
import torch
import torch.nn as nn

from weft.errors import PlanError
from weft.parallel.pipeline.layers import as_sequential
from weft.planner import ModelProfile, profile_model


def test_sequential_profile_fields():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    prof = profile_model(model, torch.randn(8, 16), repeats=2, use_cache=False)
    assert [l.name for l in prof.layers] == ["0", "1", "2"]
    assert prof.layers[0].param_bytes == (16 * 32 + 32) * 4
    assert prof.layers[1].param_bytes == 0
    assert prof.layers[0].output_bytes == 8 * 32 * 4
    assert prof.layers[2].output_shape == (8, 4)
    assert all(l.forward_s > 0 for l in prof.layers)
    assert prof.layers[0].backward_s >= 0
    # a linear layer saves its input for the weight gradient
    assert prof.layers[0].saved_bytes >= 8 * 16 * 4
    assert prof.scaled(16).layers[0].output_bytes == 16 * 32 * 4


def test_profile_cache_and_json_roundtrip(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    x = torch.randn(2, 4)
    p1 = profile_model(model, x, repeats=1, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["format"] == "weft.profile/1" and len(data["layers"]) == 2
    # a cached profile is returned as saved (times are not re-measured)
    data["layers"][0]["forward_s"] = 123.0
    files[0].write_text(json.dumps(data))
    p2 = profile_model(model, x, repeats=1, cache_dir=tmp_path)
    assert p2.layers[0].forward_s == 123.0
    assert p2.layers[1] == p1.layers[1]
    p2.save(tmp_path / "p.json")
    assert ModelProfile.load(tmp_path / "p.json").layers == p2.layers


def test_bad_profile_file(tmp_path):
    (tmp_path / "bad.json").write_text('{"format": "nope"}')
    with pytest.raises(PlanError, match="bad.json: not a weft profile"):
        ModelProfile.load(tmp_path / "bad.json")


def test_sequence_times_leave_model_untouched_and_time_every_layer():
    from weft.planner.profile import sequence_times

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    before = [p.detach().clone() for p in m.parameters()]
    fwd, bwd = sequence_times(list(m.children()), torch.randn(4, 8), repeats=2)
    assert len(fwd) == len(bwd) == 3
    assert all(f > 0 for f in fwd) and all(b >= 0 for b in bwd)
    assert all(p.grad is None for p in m.parameters())  # accumulated grads are cleared
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    fmin, bmin = sequence_times(list(m.children()), torch.randn(4, 8), repeats=2,
                                statistic="min")
    assert len(fmin) == 3 and all(f > 0 for f in fmin) and all(b >= 0 for b in bmin)
    with pytest.raises(PlanError, match="statistic"):
        sequence_times(list(m.children()), torch.randn(4, 8), statistic="mean")


def test_stage_overhead_is_recorded_and_charged_once_per_stage():
    from dataclasses import replace

    from weft.planner import CostModel

    prof = profile_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), torch.randn(4, 8),
                         repeats=2, use_cache=False)
    assert prof.meta["stage_overhead_s"] > 0
    layers = [replace(l, forward_s=1.0, backward_s=2.0) for l in prof.layers]
    p = ModelProfile(layers, 4, meta={"stage_overhead_s": 0.5})
    cm = CostModel(p, bandwidth=torch.full((1, 1), float("inf")).numpy(),
                   memory=torch.full((1,), 1e12).numpy(), microbatches=2)
    assert cm.stage_time(0, 2, 0, 1) == pytest.approx(2 * (6.0 + 0.5))
    assert cm.stage_time(0, 1, 0, 1) == pytest.approx(2 * (3.0 + 0.5))


def test_export_profile_partition_stages_equal_whole_model():
    from tests.parallel.pipeline.test_layer_chain import ShapeBranch

    from weft.planner import equal_layers, partition
    from weft.topology.builders import ring

    model, x = ShapeBranch(), torch.randn(6, 4)
    prof = profile_model(model, x, repeats=1, use_cache=False)
    assert [l.name for l in prof.layers] == ["stem", "blocks_0", "blocks_1", "view", "head"]
    assert prof.layers[0].param_bytes == (4 * 8 + 8) * 4
    seq = as_sequential(model, x, "export")
    for plan in (partition(prof, ring(3), workers=3, microbatches=2),
                 equal_layers(prof, ring(3), workers=3, microbatches=2)):
        stages = [nn.Sequential(*seq[i:j]) for i, j in plan.boundaries()]
        h = x
        for stage in stages:
            h = stage(h)
        assert torch.allclose(h, model(x), atol=1e-6)
    assert len(stages) == 3
