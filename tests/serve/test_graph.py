"""Channel groups over fx graphs and physical pruning: exact against the unpruned model."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from weft.serve import testbed as tb
from weft.serve.errors import ServeError, UnsupportedModelError
from weft.serve.graph import analyze
from weft.serve.pruning import count_flops, count_params, prune


def _kill(graph, dead: dict[int, list[int]]) -> None:
    """Make the listed channels exactly zero wherever their group's tensors are produced."""
    mods = dict(graph.gm.named_modules())
    with torch.no_grad():
        for gid, idx in dead.items():
            g = graph.groups[gid]
            for name in g.producers + g.per_channel:
                mods[name].weight[idx] = 0
                if mods[name].bias is not None:
                    mods[name].bias[idx] = 0


def _randomize_bn(model) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def _check_exact(model, shape, rng: torch.Generator):
    _randomize_bn(model)
    graph = analyze(model.eval(), shape)
    keep, dead = {}, {}
    for g in graph.prunable():
        perm = torch.randperm(g.size, generator=rng).tolist()
        n = int(torch.randint(1, g.size + 1, (1,), generator=rng))
        keep[g.id], dead[g.id] = sorted(perm[:n]), sorted(perm[n:])
    _kill(graph, dead)
    small = prune(graph, keep).eval()
    x = torch.randn(5, *shape, generator=rng)
    with torch.no_grad():
        torch.testing.assert_close(small(x), graph.gm(x), rtol=1e-4, atol=1e-5)
    mods, orig = dict(small.named_modules()), dict(graph.gm.named_modules())
    for g in graph.prunable():  # kept output channels are the original's, in order
        for name in g.producers:
            assert mods[name].weight.shape[0] == len(keep[g.id]) <= orig[name].weight.shape[0]
    if any(dead.values()):
        assert count_params(small) < count_params(graph.gm)
    return graph, small


def test_resnet_groups_follow_residuals_and_flatten():
    graph = analyze(tb.digits_resnet(width=8), (1, 8, 8))
    by_producer = {p: g for g in graph.groups.values() for p in g.producers}
    stem = by_producer["stem.0"]
    assert "layers.0.conv2" in stem.producers  # the block's output is added to its input
    assert {"stem.1", "layers.0.bn2"} <= set(stem.per_channel)
    last = by_producer["layers.1.conv2"]
    assert "layers.1.downsample.0" in last.producers  # projection shortcut joins the residual group
    assert ("head.1", 16) in last.consumers  # 16 features per channel after flattening 4x4
    assert by_producer["head.4"].frozen == "classifier output"
    assert graph.groups[0].frozen == "model input"
    assert graph.head == "head.4" and graph.num_classes == 10


@settings(max_examples=12, deadline=None)
@given(width=st.integers(2, 6), blocks=st.lists(st.integers(1, 2), min_size=1, max_size=3),
       hidden=st.sampled_from([0, 5]), seed=st.integers(0, 2 ** 16))
def test_pruning_dead_channels_is_exact(width, blocks, hidden, seed):
    size = 2 ** (len(blocks) + 1)
    fs = size // 2 ** (len(blocks) - 1)
    model = tb.ResNet(4, width, tuple(blocks), 2, hidden=hidden, feature_size=fs)
    _check_exact(model, (2, size, size), torch.Generator().manual_seed(seed))


class FunctionalNet(nn.Module):
    """Functional ops, depthwise conv, view(N, -1), BatchNorm1d, scalar multiply, elementwise product."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.b = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6 * 4, 7)
        self.bn = nn.BatchNorm1d(7)
        self.out = nn.Linear(7, 3)

    def forward(self, x):
        a = torch.relu(self.a(x))
        h = torch.nn.functional.relu(self.dw(a)) * 0.5
        h = h * self.b(a).sigmoid()
        h = torch.nn.functional.max_pool2d(h, 2)
        h = h.view(h.size(0), -1)
        return self.out(torch.relu(self.bn(self.fc(h))))


def test_functional_ops_depthwise_and_view_prune_exactly():
    graph, small = _check_exact(FunctionalNet(), (3, 4, 4), torch.Generator().manual_seed(1))
    assert count_flops(small, (3, 4, 4)) <= count_flops(graph.gm, (3, 4, 4))


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3)
        self.c = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(torch.relu(self.c(h)).mean((2, 3)))


def test_unsupported_node_is_named_or_frozen():
    with pytest.raises(UnsupportedModelError, match=r"node 'cat' \(call_function cat\)"):
        analyze(Cat(), (1, 6, 6))
    graph = analyze(Cat(), (1, 6, 6), on_unsupported="freeze")
    assert any(u.startswith("cat") for u in graph.unsupported)
    by_producer = {p: g for g in graph.groups.values() for p in g.producers}
    assert not by_producer["a"].prunable and not by_producer["b"].prunable
    # mean((2, 3)) is unsupported too: the group of c is frozen, so nothing is prunable
    assert graph.prunable() == []


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.stem = nn.Conv2d(1, 4, 1)
        self.fc = nn.Linear(4 * 9, 3)

    def forward(self, x):
        h = self.stem(x)
        return self.fc(torch.flatten(torch.relu(self.c(torch.relu(self.c(h)))), 1))


class NotClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.c(x)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x), x


@pytest.mark.parametrize("model, shape, message", [
    (Shared(), (1, 3, 3), "'c' .* called 2 times"),
    (NotClassifier(), (1, 5, 5), r"not a classifier: output node 'c' has shape \(2, 4, 3, 3\)"),
    (nn.Sequential(nn.Linear(4, 3), nn.Softmax(1)), (4,), "not a classifier with a linear head"),
    (Branchy(), (4,), "cannot be traced with torch.fx"),
    (TwoOutputs(), (4,), "not a classifier: the model returns tuple"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 3)), (1, 3, 3), "fails on an input of shape"),
])
def test_bad_models_are_named(model, shape, message):
    with pytest.raises(UnsupportedModelError, match=message):
        analyze(model, shape)


def test_prune_rejects_bad_keep_sets():
    graph = analyze(tb.digits_resnet(width=4), (1, 8, 8))
    g = graph.prunable()[0]
    frozen = next(gr for gr in graph.groups.values() if gr.frozen == "classifier output")
    with pytest.raises(ServeError, match="cannot be pruned"):
        prune(graph, {frozen.id: [0]})
    with pytest.raises(ServeError, match=r"channel indices in \[0, 4\)"):
        prune(graph, {g.id: [0, 4]})
    with pytest.raises(ServeError, match="no channel group 999"):
        prune(graph, {999: [0]})
