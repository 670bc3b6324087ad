"""Decomposition: per-class statistics, channel choice, subnets, accuracy against the original."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from weft.serve import (
    DecomposeConfig,
    Ensemble,
    ServeError,
    UnsupportedModelError,
    decompose,
    evaluate,
)
from weft.serve import testbed as tb
from weft.serve.graph import analyze
from weft.serve.pruning import class_statistics, select_channels


def test_apoz_matches_a_direct_measurement(digits_model, digits_sets):
    x, y = digits_sets[0].tensors
    graph = analyze(digits_model, (1, 8, 8))
    stats = class_statistics(graph, x, y, batch_size=100)
    group = next(g for g in graph.prunable() if g.points == ["layers_0_relu"])
    seen = []
    hook = digits_model.layers[0].relu.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    with torch.no_grad():
        digits_model(x)
    hook.remove()
    zeros = (seen[0] == 0).float().mean((2, 3))  # [N, channels]
    for c in (0, 7):
        torch.testing.assert_close(stats["apoz"][group.id][c], zeros[y == c].mean(0))


def test_channels_kept_are_the_most_active_on_the_classes():
    graph = analyze(tb.digits_resnet(width=4), (1, 8, 8))
    stats = {"apoz": {}, "magnitude": {}}
    for g in graph.prunable():
        apoz = torch.full((10, g.size), 0.9)
        apoz[3, 1] = apoz[3, 2] = 0.1  # channels 1, 2 fire on class 3 only
        apoz[5, 0] = 0.0
        stats["apoz"][g.id] = apoz
    kept = select_channels(graph, stats, [3], keep=0.5, criterion="apoz")
    assert all(v == [1, 2] for gid, v in kept.items() if graph.groups[gid].size == 4)
    kept = select_channels(graph, stats, [3, 5], keep=0.25, criterion="apoz")
    assert all(v == [0] for gid, v in kept.items() if graph.groups[gid].size == 4)
    with pytest.raises(ServeError, match="keep=0"):
        select_channels(graph, stats, [3], keep=0, criterion="apoz")


def test_subnets_keep_a_strict_subset_of_channels(digits_bundle, digits_model):
    graph = analyze(digits_model, (1, 8, 8))
    original = dict(graph.gm.named_modules())
    for m in digits_bundle.members:
        kept = {int(g): v for g, v in m.info["kept"].items()}
        assert set(kept) == {g.id for g in graph.prunable()}
        for gid, idx in kept.items():
            size = graph.groups[gid].size
            assert idx == sorted(set(idx)) and 0 < len(idx) < size and idx[-1] < size
        assert 0 < m.info["kept_ratio"] < 1
        sub = dict(m.module.named_modules())
        for name, mod in original.items():
            if isinstance(mod, nn.Conv2d):
                assert sub[name].out_channels < mod.out_channels and sub[name].in_channels <= mod.in_channels
        assert m.info["params"] < digits_bundle.provenance["original"]["params"]
        assert m.info["flops"] < digits_bundle.provenance["original"]["flops"]
        assert m.module(torch.zeros(3, 1, 8, 8)).shape == (3, len(m.classes) + 1)


def test_a_subnet_file_runs_without_weft(digits_bundle):
    """The saved subnet is a plain torch.fx GraphModule: loading and running it needs only torch."""
    m = digits_bundle.members[0]
    path = digits_bundle.path / f"members/{m.name}.pt"
    code = ("import sys; sys.modules['weft'] = None\n"  # any import of weft now fails
            "import torch\n"
            f"m = torch.load({str(path)!r}, weights_only=False)\n"
            "print(tuple(m(torch.rand(4, 1, 8, 8)).shape))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"(4, {len(m.classes) + 1})"


def test_decomposed_digits_within_one_point_of_the_original(digits_bundle, digits_model, digits_sets):
    x, y = digits_sets[1].tensors
    original = tb.accuracy(digits_model, digits_sets[1])
    ensemble = evaluate(Ensemble(digits_bundle), x, y)
    assert ensemble >= original - 0.01, (original, ensemble)
    assert digits_bundle.provenance["test"] == {"samples": len(y), "original_accuracy": original,
                                                 "ensemble_accuracy": ensemble}
    assert sorted(c for m in digits_bundle.members for c in m.classes) == list(range(10))
    assert all(0.05 < m.temperature < 20 for m in digits_bundle.members)


def test_one_class_per_subnet_by_default(digits_sets):
    model = tb.digits_resnet(width=4).eval()
    b = decompose(model, *digits_sets, DecomposeConfig(steps=0, keep=0.5, grouping="confusion"))
    assert [m.classes for m in b.members] == [[c] for c in range(10)]
    assert all(m.other for m in b.members)
    one = decompose(model, digits_sets[0], None, DecomposeConfig(groups=1, steps=0))
    assert [m.classes for m in one.members] == [list(range(10))] and not one.members[0].other


@pytest.mark.parametrize("kwargs, message", [
    ({"config": DecomposeConfig(groups=11)}, "groups=11: must be between 1 and the model's 10 classes"),
    ({"config": DecomposeConfig(groups=0)}, "groups=0"),
    ({"config": DecomposeConfig(keep=1.5)}, r"keep=1.5: expected a fraction in \(0, 1\]"),
    ({"config": DecomposeConfig(grouping="random")}, "grouping='random'"),
    ({"train": (torch.zeros(20, 1, 8, 8), torch.arange(20))}, "labels span 0..19, but the model has 10 classes"),
    ({"train": (torch.zeros(20, 1, 8, 8), torch.arange(20) % 9)}, r"no samples of classes \[9\]"),
    ({"train": (torch.zeros(20, 1, 8, 8), torch.zeros(20))}, "labels are torch.float32"),
    ({"train": (torch.zeros(20, 1, 8, 8), torch.zeros(19, dtype=torch.long))}, r"inputs \[20, 1, 8, 8\] and labels \[19\]"),
])
def test_bad_decomposition_input_is_named(kwargs, message, digits_sets):
    args = {"train": digits_sets[0], "config": DecomposeConfig(steps=0)} | kwargs
    with pytest.raises(ServeError, match=message):
        decompose(tb.digits_resnet(width=4), args["train"], None, args["config"])


def test_a_model_that_is_not_a_classifier_is_refused(digits_sets):
    with pytest.raises(UnsupportedModelError, match="not a classifier"):
        decompose(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), digits_sets[0])


def test_fading_ends_where_removal_starts(digits_model, digits_sets):
    """After the fade the removed channels contribute exactly 0: the physically pruned subnet
    answers what the faded whole model answers, and fading changed the kept weights."""
    import dataclasses

    from weft.serve import decomposition as D
    from weft.serve.pruning import prune, replace_head

    torch.manual_seed(0)
    x, y = digits_sets[0].tensors
    graph = analyze(digits_model, (1, 8, 8))
    stats = class_statistics(graph, x, y)
    classes = [0, 1, 2]
    kept = select_channels(graph, stats, classes, 0.5, "apoz")
    whole = prune(graph, {})
    replace_head(whole, graph.head, classes, True)
    before = {k: v.clone() for k, v in whole.state_dict().items()}
    target = D._targets(y, torch.zeros(len(y), 10), classes, True, 10, 2.0)
    cfg = DecomposeConfig(batch_size=32)
    seen = []
    original = D._fine_tune

    def spy(sub, *a, **kw):  # the last forward of the fade runs with every removed channel at 0
        out = original(sub, *a, **kw)
        with torch.no_grad():
            seen.append(sub(x[:64]))
        return out

    D._fine_tune = spy
    try:
        D._fade_out(whole, graph, kept, x, target, cfg, steps=5, seed=0)
    finally:
        D._fine_tune = original
    sub = prune(dataclasses.replace(graph, gm=whole), kept)
    with torch.no_grad():
        torch.testing.assert_close(sub.eval()(x[:64]), seen[0])
        assert not torch.allclose(whole(x[:64]), seen[0])  # without the fade hooks: the channels are back
    assert any(not torch.equal(before[k], v) for k, v in whole.state_dict().items())
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in whole.parameters())
