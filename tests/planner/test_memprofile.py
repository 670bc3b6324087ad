"""Memory over a training step: measured allocations, binning, the file format, the CLI."""

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from weft.cli import main
from weft.errors import PlanError
from weft.planner.memprofile import MemoryProfile, profile_memory


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 4))


def test_profile_counts_the_steps_tensors():
    model = _mlp()
    x, y = torch.randn(512, 32), torch.randint(0, 4, (512,))
    p = profile_memory(model, x, y, nn.functional.cross_entropy)
    params = sum(q.numel() * q.element_size() for q in model.parameters())
    # held between steps: weights, their gradients, SGD momentum, and the batch
    assert p.baseline == 3 * params + x.nbytes + y.nbytes
    # after the forward the old gradients are gone (set_to_none) and activations are held:
    # at least the two 512x256 hidden outputs the backward needs
    fwd = float(p.at(p.marks["forward_end"]))
    assert fwd >= 2 * params + x.nbytes + y.nbytes + 2 * 512 * 256 * 4
    assert p.peak >= fwd and 0 < p.marks["forward_end"] < p.marks["backward_end"] < p.period
    # a bigger batch holds more activations, the parameters stay
    q = profile_memory(model, torch.randn(1024, 32), torch.randint(0, 4, (1024,)),
                       nn.functional.cross_entropy)
    assert q.peak - p.peak >= 2 * 512 * 256 * 4
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), _mlp().parameters()))


def test_bins_take_each_bins_maximum():
    p = MemoryProfile([0.0, 0.1, 0.25, 0.26, 0.7], [5, 9, 2, 7, 3], period=1.0)
    fine = np.linspace(0, 1, 10_001)[:-1]
    for n in (1, 3, 4, 10):
        want = [p.at(fine[(fine >= k / n) & (fine < (k + 1) / n)]).max() for k in range(n)]
        assert list(p.bins(n)) == want
    assert list(p.bins(2, period=2.0)) == [9, 3]      # a longer period holds the last value
    with pytest.raises(PlanError, match="shorter than the step"):
        p.bins(4, period=0.5)


def test_retimed_maps_each_phase_onto_its_duration():
    p = MemoryProfile([0.0, 0.1, 0.2, 0.5, 0.9, 1.0], [1, 2, 3, 4, 5, 6], period=1.2,
                      marks={"forward_end": 0.2, "backward_end": 1.0}, meta={"k": 1})
    q = p.retimed({"forward": 0.4, "backward": 0.4, "rest": 0.1})
    # forward [0, 0.2] -> [0, 0.4] (x2); backward [0.2, 1.0] -> [0.4, 0.8] (x0.5);
    # rest [1.0, 1.2] -> [0.8, 0.9]
    assert q.times == pytest.approx([0.0, 0.2, 0.4, 0.55, 0.75, 0.8])
    assert q.bytes == p.bytes and q.period == pytest.approx(0.9)
    assert q.marks == pytest.approx({"forward_end": 0.4, "backward_end": 0.8})
    assert q.meta == {"k": 1, "profiled_period_s": 1.2,
                      "profiled_marks": {"forward_end": 0.2, "backward_end": 1.0}}
    with pytest.raises(PlanError, match="no mark 'forward_end'"):
        MemoryProfile([0.0], [1.0], 1.0).retimed({"forward": 1, "backward": 1, "rest": 1})
    with pytest.raises(PlanError, match="need durations >= 0 s"):
        p.retimed({"forward": -1, "backward": 1, "rest": 1})


class _SlowWhenProfiled(nn.Module):
    """Sleeps in its forward only while torch's profiler records: a stand-in for the
    profiler's overhead landing on one phase."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 4)

    def forward(self, x):
        if torch.autograd._profiler_enabled():
            time.sleep(0.3)
        return self.lin(x)


def test_profile_times_are_those_of_an_unprofiled_step():
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    raw = profile_memory(_SlowWhenProfiled(), x, y, nn.functional.cross_entropy,
                         timing="profiled")
    assert raw.marks["forward_end"] >= 0.3 and "timing" not in raw.meta
    p = profile_memory(_SlowWhenProfiled(), x, y, nn.functional.cross_entropy)
    assert p.meta["timing"] == "unprofiled" and p.meta["profiled_marks"]["forward_end"] >= 0.3
    assert p.marks["forward_end"] < 0.1 and p.period < 0.2
    assert 0 < p.marks["forward_end"] < p.marks["backward_end"] < p.period
    assert p.bytes == raw.bytes or p.peak == pytest.approx(raw.peak, rel=0.01)
    assert p.times == sorted(p.times)
    with pytest.raises(PlanError, match="timing must be one of"):
        profile_memory(_SlowWhenProfiled(), x, y, timing="wall")


def test_file_round_trip_and_errors(tmp_path):
    p = MemoryProfile([0.0, 0.5], [1.0, 4.0], 1.0, {"forward_end": 0.5}, batch_size=8)
    back = MemoryProfile.load(p.save(tmp_path / "m.json"))
    assert back.to_dict() == p.to_dict()
    bad = p.to_dict() | {"bytes": [1.0, -2.0]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(PlanError, match=r"bad.json: field 'bytes' has a negative value"):
        MemoryProfile.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(PlanError, match=r"old.json: field 'format' must be"):
        MemoryProfile.load(tmp_path / "old.json")


SPEC = '''
import torch
from torch import nn
model = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 4))
def example_input(b):
    return torch.randn(b, 16)
'''


def test_cli_memory_and_offsets(tmp_path, capsys):
    spec = tmp_path / "net.py"
    spec.write_text(SPEC)
    out = tmp_path / "prof"
    rc = main(["profile", "memory", str(spec), "--batch", "16", "--batch", "256", "--waves", "2",
               "--budget", "4MiB", "--out", str(out)])
    assert rc == 0
    assert {f.name for f in out.iterdir()} >= {"memory_b16.json", "memory_b256.json",
                                              "memory.png", "offsets.json"}
    small, big = (MemoryProfile.load(out / f"memory_b{b}.json") for b in (16, 256))
    assert small.batch_size == 16 and big.peak > small.peak
    rep = json.loads((out / "offsets.json").read_text())
    assert rep["plan"]["combined_peak_bytes"] <= rep["plan"]["gang_peak_bytes"]
    assert rep["largest_batch"]["one_wave"] > 0
    rc = main(["profile", "offsets", str(out / "memory_b16.json"), str(out / "memory_b256.json"),
               "--budget", "1GiB", "--out", str(tmp_path / "off")])
    assert rc == 0 and (tmp_path / "off" / "offsets.png").exists()
    assert json.loads((tmp_path / "off" / "offsets.json").read_text())["fits"] is True
    capsys.readouterr()
    (tmp_path / "bare.py").write_text("from torch import nn\nmodel = nn.Linear(4, 4)\n")
    assert main(["profile", "memory", str(tmp_path / "bare.py"), "--batch", "4"]) == 2
    assert "pass --input-shape" in capsys.readouterr().err
    assert main(["profile", "memory", str(spec), "--batch", "0"]) == 2


def test_cli_takes_the_specs_example_batch_and_optimizer(tmp_path, capsys):
    """A spec's example_batch(b) feeds inputs and labels to its loss_fn, and the step is
    profiled with its optimizer(params): Adam's two moments show in the bytes at the step's
    start (parameters, gradients, two moments: 4 copies) where the default SGD has 3."""
    base = SPEC_XY.replace("OPT", "")
    adam = SPEC_XY.replace("OPT", "def optimizer(params):\n    return torch.optim.Adam(params)\n")
    starts = {}
    for name, text in (("sgd", base), ("adam", adam)):
        spec = tmp_path / f"{name}.py"
        spec.write_text(text)
        assert main(["profile", "memory", str(spec), "--batch", "8", "--out",
                     str(tmp_path / name)]) == 0
        prof = MemoryProfile.load(tmp_path / name / "memory_b8.json")
        starts[name] = prof.baseline
    capsys.readouterr()
    params = (32 * 256 + 256) + (256 * 4 + 4)
    assert (tmp_path / "labels_seen").read_text() == "8"
    assert starts["adam"] - starts["sgd"] == pytest.approx(params * 4, rel=0.05)
    (tmp_path / "bad.py").write_text("import torch\nfrom torch import nn\nmodel = nn.Linear(2, 2)\n"
                                     "def example_batch(b):\n    return torch.randn(b, 2)\n")
    assert main(["profile", "memory", str(tmp_path / "bad.py"), "--batch", "2"]) == 2
    assert "example_batch(2) must return" in capsys.readouterr().err


SPEC_XY = '''
import pathlib
import torch
from torch import nn

model = lambda: nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 4))


def example_batch(b):
    return torch.randn(b, 32), torch.randint(0, 4, (b,))


def loss_fn(out, y):
    pathlib.Path(__file__).with_name("labels_seen").write_text(str(len(y)))
    return nn.functional.cross_entropy(out, y)


OPT
'''
