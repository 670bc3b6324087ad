"""Synchronous schedules equal single-process gradient accumulation (real gloo ranks)."""

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from weft.launch import launch
from weft.parallel.pipeline.runtime import Pipeline

STEPS, M, BATCH = 3, 4, 16


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def opt(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 6, generator=g), torch.randint(0, 3, (BATCH,), generator=g))
            for _ in range(STEPS)]


def reference():
    model = make_model()
    o = opt(list(model.parameters()))
    for x, y in data():
        for xm, ym in zip(x.chunk(M), y.chunk(M)):
            (F.cross_entropy(model(xm), ym) / M).backward()
        o.step()
        o.zero_grad()
    return {i: [p.detach() for p in layer.parameters()] for i, layer in enumerate(model)}


def run_configs(configs):
    out = []
    for bounds, ranks, kind in configs:
        pipe = Pipeline(make_model(), bounds, ranks, F.cross_entropy, kind, M, optimizer=opt,
                        record=True)
        for x, y in data():
            pipe.step(x, y)
        kinds = [e[1] for e in pipe.events]
        v = len(bounds) // len(ranks)
        per_replica = STEPS * M * v // len(ranks[pipe.stage])
        assert kinds.count("F") == kinds.count("B") == per_replica
        out.append({l: list(sd.values()) for l, sd in pipe.state_by_layer().items()})
        dist.barrier()
    return out


def check(results, n_configs):
    ref = reference()
    for k in range(n_configs):
        merged = {}
        for rank_result in results:
            merged.update(rank_result[k])
        assert sorted(merged) == sorted(ref)
        for layer, params in ref.items():
            for got, want in zip(merged[layer], params):
                assert torch.allclose(torch.from_numpy(got), want, atol=1e-5, rtol=0), (k, layer)


def test_two_ranks_gpipe_1f1b_interleaved():
    configs = [([(0, 3), (3, 7)], [[0], [1]], "gpipe"),
               ([(0, 4), (4, 7)], [[0], [1]], "1f1b"),
               ([(0, 2), (2, 4), (4, 5), (5, 7)], [[0], [1]], "interleaved"),
               ([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 7)], [[0], [1]], "interleaved")]
    check(launch(run_configs, 2, args=(configs,), timeout=60), len(configs))


@pytest.mark.slow
def test_three_ranks_with_replicated_stages():
    configs = [([(0, 3), (3, 7)], [[0, 1], [2]], "1f1b"),
               ([(0, 5), (5, 7)], [[0], [1, 2]], "gpipe"),
               ([(0, 2), (2, 5), (5, 7)], [[0], [1], [2]], "1f1b")]
    check(launch(run_configs, 3, args=(configs,), timeout=60), len(configs))


def export_model():
    from .test_layer_chain import ShapeBranch

    return ShapeBranch()


def run_export_pipeline():
    """A model only torch.export can capture, cut into 2 stages, trained 1F1B on 2 ranks."""
    x0 = torch.randn(BATCH // M, 4)
    pipe = Pipeline(export_model(), [(0, 2), (2, 5)], [[0], [1]], F.cross_entropy, "1f1b", M,
                    optimizer=opt, example_input=x0)
    g = torch.Generator().manual_seed(2)
    for _ in range(2):
        pipe.step(torch.randn(BATCH, 4, generator=g), torch.randint(0, 3, (BATCH,), generator=g))
    return {name: p.detach().numpy().copy() for c in pipe.my_chunks
            for l in range(*pipe.bounds[c]) for name, p in pipe.layers[l].named_parameters()}


def test_export_captured_model_pipeline_equals_single_process():
    results = launch(run_export_pipeline, 2, timeout=60)
    model = export_model()
    o = opt(list(model.parameters()))
    g = torch.Generator().manual_seed(2)
    for _ in range(2):
        x, y = torch.randn(BATCH, 4, generator=g), torch.randint(0, 3, (BATCH,), generator=g)
        for xm, ym in zip(x.chunk(M), y.chunk(M)):
            (F.cross_entropy(model(xm), ym) / M).backward()
        o.step()
        o.zero_grad()
    merged = {**results[0], **results[1]}
    ref = dict(model.named_parameters())
    assert sorted(merged) == sorted(ref)
    assert set(results[0]) & set(results[1]) == set()
    for name, p in ref.items():
        assert torch.allclose(torch.from_numpy(merged[name]), p.detach(), atol=1e-5), name


@pytest.mark.slow
def test_four_ranks_hierarchical_rank_order():
    # a hierarchical plan on 2 hosts x 2 workers: each stage replicated across the hosts,
    # replicas interleaved host by host (micro-batch mb stays on host mb % 2)
    configs = [([(0, 3), (3, 7)], [[0, 2], [1, 3]], "1f1b")]
    check(launch(run_configs, 4, args=(configs,), timeout=60), len(configs))
