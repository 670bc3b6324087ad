"""Process groups made inside `own_groups()` are destroyed after it, their threads ended."""

import torch
import torch.distributed as dist

from weft.launch import launch
from weft.parallel.groups import live_groups, own_groups, transport_threads


def _worker():
    from torch.distributed.device_mesh import init_device_mesh

    kept = dist.new_group([0, 1])            # made before the block: it stays
    start = (len(live_groups()), transport_threads())
    with own_groups():
        g = dist.new_group([0, 1])
        mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("a", "b"))
        x = torch.ones(3)
        dist.all_reduce(x, group=g)
        dist.all_reduce(x, group=mesh.get_group("b"))
        inside = (len(live_groups()), transport_threads())
        del g, mesh
    after = (len(live_groups()), transport_threads())
    y = torch.ones(2)
    dist.all_reduce(y, group=kept)            # still works
    return start, inside, after, x.tolist(), y.tolist()


def _dtensor_worker():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    start = transport_threads()
    with own_groups():
        mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "tp"))
        d = distribute_tensor(torch.arange(4.0), mesh["tp"], [Shard(0)])
        full = (d * 2).full_tensor().tolist()   # torch's sharding caches now hold the mesh
        inside = transport_threads()
        del mesh, d
    return start, inside, transport_threads(), full


def test_groups_made_inside_are_destroyed_and_their_threads_end():
    for start, inside, after, x, y in launch(_worker, 2, timeout=120):
        assert inside[0] >= start[0] + 2 and inside[1] >= start[1] + 2
        assert after == start
        assert x == [4.0] * 3 and y == [2.0] * 2


def test_a_mesh_held_by_torchs_caches_does_not_keep_its_groups_alive():
    """DTensor's sharding caches keep every DeviceMesh they saw, and a mesh keeps its
    process groups (`_pg_registry`): the groups' transports outlived the block (3-4 per
    tensor- or fully-sharded plan on 4 ranks, each a thread that wakes every 10 ms)."""
    for start, inside, after, full in launch(_dtensor_worker, 2, timeout=120):
        assert inside > start
        assert after == start
        assert full == [0.0, 2.0, 4.0, 6.0]


def _data_parallel_worker():
    import gc
    import weakref

    from weft.collectives.communicator import TorchCommunicator
    from weft.parallel.data import DataParallel

    start = transport_threads()
    with own_groups():
        g = dist.new_group([0, 1])
        dp = DataParallel(torch.nn.Linear(4, 2), communicator=TorchCommunicator(g))
        dp(torch.randn(3, 4)).sum().backward()
        grad = dp.module.weight.grad.clone()
        alive = weakref.ref(dp)
        del dp, g
    gc.collect()
    return start, transport_threads(), alive() is None, grad


def test_a_data_parallel_model_is_freed_with_its_group():
    """weft's DataParallel hooks its parameters' gradients; hooked by its own bound method
    it was a cycle through the tensors' hooks that the garbage collector never freed, so
    every model built (a benchmark's plans, a re-plan, an elastic resize) stayed, with its
    gradient buckets and its group's transport thread."""
    (s0, a0, freed0, g0), (s1, a1, freed1, g1) = launch(_data_parallel_worker, 2, timeout=120)
    assert freed0 and freed1
    assert (a0, a1) == (s0, s1)
    assert torch.equal(g0, g1)  # the hook ran: the gradients were averaged
