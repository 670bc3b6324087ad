"""The noise-scale monitor, computed across real gloo ranks, against direct computations."""

import pytest
import torch
import torch.distributed as dist
from torch import nn

from weft.adapt.monitors import EMA, Monitors, noise_scale_terms, pack
from weft.adapt.sync import SyncSGD
from weft.collectives.communicator import TorchCommunicator
from weft.demo.data import digits
from weft.launch import launch
from weft.demo.models import digits_mlp

N, STEPS, SEED = 128, 200, 3


def _setup():
    torch.manual_seed(SEED)
    model = digits_mlp(32, 2)
    x, y = digits(flat=True)[0].tensors
    return model, x[:N], y[:N]


def _shard(step, rank, world):
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(step))
    b = N // world
    return perm[rank * b:(rank + 1) * b]


def _grads(model, x, y):
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()


def _ranks():
    rank, world = dist.get_rank(), dist.get_world_size()
    model, x, y = _setup()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.0)  # the model stays fixed: one fixed batch
    mon, comm = Monitors(decay=0.995), TorchCommunicator()
    first = None
    for step in range(STEPS):
        idx = _shard(step, rank, world)
        g = _grads(model, x[idx], y[idx])
        stats = pack(float(g.square().sum()), 0.0, len(idx), 0.0)
        reduced, sq_big = SyncSGD().apply(params, opt, comm, 1 / world, stats, True)
        m = mon.update(reduced, sq_big, True)
        first = first or m
    return first, m


@pytest.mark.slow
def test_noise_scale_matches_direct_computation():
    world = 2
    (first, last), _ = launch(_ranks, world, timeout=60)
    model, x, y = _setup()
    # 1. Step 0 equals the McCandlish estimator computed in one process on the same shards.
    gs = [_grads(model, x[_shard(0, r, world)], y[_shard(0, r, world)]) for r in range(world)]
    sq_small = sum(float(g.square().sum()) for g in gs) / world
    sq_big = float((sum(gs) / world).square().sum())
    g2, tr = noise_scale_terms(sq_small, sq_big, N // world, N)
    assert first["grad_norm_sq"] == pytest.approx(g2, rel=1e-3)
    assert first["grad_variance"] == pytest.approx(tr, rel=1e-3)
    assert first["noise_scale"] == pytest.approx(tr / g2, rel=1e-3)
    # 2. Smoothed over many partitions it matches the definition B = tr(Sigma)/|G|^2 from
    #    per-example gradients of the fixed batch (unbiased |G|^2), within 5%.
    per_ex = torch.stack([_grads(model, x[i:i + 1], y[i:i + 1]) for i in range(N)])
    mean = per_ex.mean(0)
    tr_sigma = float(per_ex.var(0, unbiased=True).sum())
    g2_true = float(mean.square().sum()) - tr_sigma / N
    direct = tr_sigma / g2_true
    assert last["noise_scale"] == pytest.approx(direct, rel=0.05), (last["noise_scale"], direct)
    assert last["grad_snr"] > 0
    print("noise scale", last["noise_scale"], "direct", direct)


def test_estimator_recovers_known_noise_scale():
    # Gradients with known mean G and isotropic noise: B_simple = tr(S)/|G|^2 exactly in expectation.
    torch.manual_seed(0)
    d, bs, n = 2000, 8, 4
    G = torch.full((d,), 0.05, dtype=torch.float64)
    sigma = 0.5
    ema_g, ema_t = EMA(0.99), EMA(0.99)
    for _ in range(300):
        locs = [G + sigma * torch.randn(bs, d, dtype=torch.float64).mean(0) for _ in range(n)]
        small = sum(float(g.square().sum()) for g in locs) / n
        big = float((sum(locs) / n).square().sum())
        g2, tr = noise_scale_terms(small, big, bs, bs * n)
        ema_g.update(g2)
        ema_t.update(tr)
    expected = d * sigma ** 2 / float(G.square().sum())
    assert ema_t.get() / ema_g.get() == pytest.approx(expected, rel=0.05)


def test_estimator_rejects_bad_batches():
    with pytest.raises(ValueError, match="B_big > B_small"):
        noise_scale_terms(1.0, 1.0, 8, 8)
