"""N-rank data parallelism equals one process on the global batch."""

import pytest
import torch
import torch.distributed as dist
from torch import nn

from weft.collectives.communicator import TorchCommunicator
from weft.launch import launch
from weft.demo.models import digits_cnn
from weft.parallel import data_parallel, unwrap

STEPS, GLOBAL_BATCH, SEED = 4, 32, 7


def _batches():
    g = torch.Generator().manual_seed(123)
    x = torch.rand(STEPS * GLOBAL_BATCH, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (STEPS * GLOBAL_BATCH,), generator=g)
    return x, y


def _train(model, rank=0, world=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _batches()
    local = GLOBAL_BATCH // world
    for s in range(STEPS):
        lo = s * GLOBAL_BATCH + rank * local
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[lo:lo + local]), y[lo:lo + local]).backward()
        opt.step()
    return {k: v.clone() for k, v in unwrap(model).state_dict().items()}


class CountingCommunicator(TorchCommunicator):
    """A user-supplied Communicator: proves the runtime goes through the interface."""

    calls = 0

    def all_reduce(self, tensor, op="sum", async_op=False):
        CountingCommunicator.calls += 1
        return super().all_reduce(tensor, op=op, async_op=async_op)


def _worker(backend, bucket_mb, custom):
    torch.manual_seed(SEED + dist.get_rank())  # different init per rank: broadcast must fix it
    model = digits_cnn(8)
    kw = {}
    if backend == "weft":
        kw["bucket_cap_mb"] = bucket_mb
        if custom:
            kw["communicator"] = CountingCommunicator()
    model = data_parallel(model, backend=backend, **kw)
    if backend == "ddp":  # DDP broadcasts rank 0's weights too
        pass
    state = _train(model, dist.get_rank(), dist.get_world_size())
    return state, CountingCommunicator.calls


@pytest.mark.parametrize("world,backend,bucket_mb,custom", [
    (2, "weft", 25.0, False),
    (4, "weft", 0.01, True),   # many small buckets, through a custom Communicator
    (2, "ddp", 25.0, False),
    (4, "ddp", 25.0, False),
])
def test_dp_matches_single_process(world, backend, bucket_mb, custom):
    torch.manual_seed(SEED)
    reference = _train(digits_cnn(8))
    results = launch(_worker, world, args=(backend, bucket_mb, custom), timeout=60)
    for rank, (state, calls) in enumerate(results):
        for k, v in reference.items():
            assert torch.allclose(state[k], v, atol=1e-5, rtol=0), (rank, k, (state[k] - v).abs().max())
        if custom:
            # 0.01 MiB buckets split the ~10k-parameter CNN into several per step.
            assert calls > STEPS
    # replicas agree bit for bit
    for state, _ in results[1:]:
        for k in reference:
            assert torch.equal(state[k], results[0][0][k])


def _no_sync_worker():
    torch.manual_seed(0)
    model = data_parallel(nn.Linear(4, 2, bias=False))
    x = torch.full((1, 4), float(dist.get_rank() + 1))
    with model.no_sync():
        model(x).sum().backward()
    local = model.module.weight.grad.clone()
    model.sync_gradients()
    return local, model.module.weight.grad.clone()


def test_no_sync_then_sync():
    (l0, g0), (l1, g1) = launch(_no_sync_worker, 2, timeout=60)
    assert not torch.equal(l0, l1)  # no communication inside no_sync
    assert torch.allclose(g0, (l0 + l1) / 2) and torch.equal(g0, g1)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown data-parallel backend"):
        data_parallel(nn.Linear(2, 2), backend="horovod")
