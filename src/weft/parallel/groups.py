"""Process groups made for one piece of work, destroyed after it.

Every gloo process group owns a TCP transport whose event loop thread wakes every 10 ms
(gloo's ``epoll_wait`` timeout) for as long as the group lives, whether or not it is used.
A process that builds several plans, meshes or models (a benchmark timing plans side by
side, a re-plan) keeps all their groups unless it destroys them, and the wake-ups take CPU
from the computation: on the 2-core machine here, 4 ranks with 50 idle groups each (159
threads per process) ran a data-parallel step 10-20% slower than with none, and the 8 GPT
plans of `benchmarks/planner.py` built at once (29 transport threads per rank) slowed the
dp4 plan by about 14% (docs/planner.md).

    with own_groups():
        pm = weft.parallelize(model, plan)   # its mesh makes groups
        ...                                  # train or time it
        del pm, opt                          # drop them: a group lives while referred to

On leaving the block, every process group made inside it (not the default group) is
destroyed on this rank; torch then frees its transport once nothing refers to it.
"""

from __future__ import annotations

import contextlib
import gc

import torch.distributed as dist


def live_groups() -> list:
    """The process groups this rank knows now, the default group included."""
    return list(dist.distributed_c10d._world.pg_map)


def destroy(groups) -> None:
    """Destroy `groups` on this rank (a group made by `dist.new_group`, not the default);
    torch frees each one's transport once nothing else refers to it, so every DeviceMesh
    still alive forgets them too (`_forget_in_meshes`)."""
    groups = list(groups)
    for g in groups:
        dist.destroy_process_group(g)
    gc.collect()
    _forget_in_meshes(groups)
    gc.collect()


def _forget_in_meshes(groups) -> None:
    """Drop `groups` from every live DeviceMesh's registry of its groups. DTensor's
    sharding caches (torch's lru_caches) keep every mesh they saw for the life of the
    process, and a mesh keeps its groups in ``_pg_registry``: without this, 4 ranks kept 3-4
    transports of every tensor- or fully-sharded plan they had built and torn down (with
    DataParallel's own leak, 38 per rank by the end of the planner benchmark's plans;
    docs/planner.md, 2026-12-03). A mesh whose groups are destroyed cannot run
    collectives anyway."""
    try:
        from torch.distributed.device_mesh import DeviceMesh
    except ImportError:  # torch built without distributed meshes
        return
    gone = {id(g) for g in groups}
    for obj in gc.get_objects():
        # by the type's MRO: isinstance() runs the metaclass's checks on every object of
        # the heap (DeviceMesh's warned about deprecated attributes of torch.distributed)
        if DeviceMesh in type(obj).__mro__:
            reg = getattr(obj, "_pg_registry", None)
            if isinstance(reg, dict):
                for name in [n for n, g in reg.items() if id(g) in gone]:
                    del reg[name]


def transport_threads() -> int:
    """Threads of this process that gloo's TCP transport runs (one event loop per group),
    what idle groups cost."""
    import os

    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                n += f.read().startswith("gloo_tcp")
        except OSError:   # the thread ended meanwhile
            pass
    return n


@contextlib.contextmanager
def own_groups():
    """Destroy, when the block ends, the process groups made inside it (see the module doc).
    Every rank that made them must leave the block; objects still referring to a group keep
    its transport alive (torch cannot free it), so drop them inside the block."""
    before = set(map(id, live_groups()))
    try:
        yield
    finally:
        made = [g for g in live_groups()
                if id(g) not in before and g is not dist.GroupMember.WORLD]
        destroy(made)
