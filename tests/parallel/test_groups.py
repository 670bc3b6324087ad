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


def test_groups_made_inside_are_destroyed_and_their_threads_end():
    for start, inside, after, x, y in launch(_worker, 2, timeout=120):
        assert inside[0] >= start[0] + 2 and inside[1] >= start[1] + 2
        assert after == start
        assert x == [4.0] * 3 and y == [2.0] * 2
