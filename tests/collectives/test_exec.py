"""Every algorithm's result equals torch.distributed's, bit-identical on every rank."""

import pytest
import torch
import torch.distributed as dist

from weft.launch import launch

SIZES = [1, 7, 1000, 12345]  # elements; uneven splits included
ALGS = ["ring", "dbtree", "flat", "packing", "packing:2"]


def _ranks(sizes, chunks, topology):
    from weft.collectives.autotune import schedule_for
    from weft.collectives.executor import execute
    from weft.collectives.fabric import Fabric
    from weft.topology.io import resolve

    n, me = dist.get_world_size(), dist.get_rank()
    f = Fabric(resolve(topology))
    bad = []
    g = torch.Generator().manual_seed(100 + me)
    for numel in sizes:
        for dtype in (torch.float32, torch.int64) if n < 6 else (torch.float32,):
            x = torch.randn(numel, generator=g).mul(100).to(dtype)
            ref_ar = x.clone()
            dist.all_reduce(ref_ar)
            root = numel % n
            ref_bc = x.clone()
            dist.broadcast(ref_bc, root)
            ref_red = x.clone()
            dist.reduce(ref_red, root)
            gathered = [torch.empty_like(x) for _ in range(n)]
            dist.all_gather(gathered, x)
            for alg in ALGS if n < 6 else ("ring", "packing"):
                for chunk in (chunks if numel * 4 > chunks[0] else chunks[-1:]):
                    for coll in ("allreduce", "broadcast", "reduce", "reduce_scatter",
                                 "all_gather"):
                        s = schedule_for(f, coll, alg, root)
                        y = x.clone()
                        if coll == "all_gather":  # my shard in place, the rest garbage
                            y = torch.full_like(x, -7)
                            b = [len(t) for t in torch.tensor_split(torch.arange(numel), n)]
                            lo = sum(b[:me])
                            y[lo:lo + b[me]] = gathered[me][lo:lo + b[me]]
                        execute(s, y, chunk_bytes=chunk, timeout=30)
                        if coll == "allreduce":
                            exact = ref_ar if dtype == torch.int64 else None
                            ok = torch.equal(y, exact) if exact is not None else \
                                torch.allclose(y, ref_ar, rtol=1e-5, atol=1e-3)
                            # bit-identical across ranks
                            z = y.clone()
                            dist.broadcast(z, 0)
                            ok = ok and torch.equal(z, y)
                        elif coll == "broadcast":
                            ok = torch.equal(y, ref_bc)
                        elif coll == "reduce":
                            ok = me != root or torch.allclose(y.double(), ref_red.double(),
                                                              rtol=1e-5, atol=1e-3)
                        elif coll == "reduce_scatter":
                            b = [len(t) for t in torch.tensor_split(torch.arange(numel), n)]
                            lo = sum(b[:me])
                            ok = torch.allclose(y[lo:lo + b[me]].double(),
                                                ref_ar[lo:lo + b[me]].double(), rtol=1e-5, atol=1e-3)
                        else:
                            b = [len(t) for t in torch.tensor_split(torch.arange(numel), n)]
                            want = torch.cat([gathered[r][sum(b[:r]):sum(b[:r + 1])]
                                              for r in range(n)])
                            ok = torch.equal(y, want)
                        if not ok:
                            bad.append((alg, coll, numel, str(dtype), chunk))
    return bad


@pytest.mark.parametrize("n,topology", [(2, "ring:2"), (3, "mesh:3"), (4, "ring:4"),
                                        (6, "mesh:6")])
def test_algorithms_match_torch_distributed(n, topology):
    chunks = [4096, 1 << 20]  # 12 pieces, 1 piece
    sizes = SIZES if n < 6 else [1, 12345]
    for rank_bad in launch(_ranks, n, args=(sizes, chunks, topology), timeout=60):
        assert rank_bad == []


def _dtypes():
    from weft.collectives.autotune import schedule_for
    from weft.collectives.executor import execute
    from weft.collectives.fabric import Fabric
    from weft.topology import ring

    f = Fabric(ring(3))
    bad = []
    for dtype in (torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8,
                  torch.int32, torch.bool, torch.complex64):
        x = (torch.arange(11) % 2 == dist.get_rank() % 2) if dtype == torch.bool else \
            (torch.arange(11) + dist.get_rank()).to(dtype)
        for alg in ("ring", "packing"):
            y = x.clone()
            execute(schedule_for(f, "allreduce", alg), y, chunk_bytes=8, timeout=30)
            want = torch.ones(11, dtype=torch.bool) if dtype == torch.bool else \
                (3 * torch.arange(11) + 3).to(dtype)
            if not torch.equal(y, want):
                bad.append((str(dtype), alg))
        y = torch.stack([x, x], 1).t()  # non-contiguous
        execute(schedule_for(f, "broadcast", "dbtree", 1), y, timeout=30)
        want = (torch.arange(11) % 2 == 1) if dtype == torch.bool else (torch.arange(11) + 1).to(dtype)
        if not torch.equal(y, torch.stack([want, want], 1).t()):
            bad.append((str(dtype), "noncontiguous"))
    return bad


def test_any_dtype_and_layout():
    for rank_bad in launch(_dtypes, 3, timeout=60):
        assert rank_bad == []


def _big():
    from weft.collectives.autotune import schedule_for
    from weft.collectives.executor import execute
    from weft.collectives.fabric import Fabric
    from weft.topology import full_mesh

    numel = 4 << 20  # 16 MiB of float32
    x = torch.full((numel,), float(dist.get_rank() + 1))
    x[::1001] = torch.arange(0, numel, 1001, dtype=torch.float32)
    ref = x.clone()
    dist.all_reduce(ref)
    execute(schedule_for(Fabric(full_mesh(2)), "allreduce", "packing"), x,
            chunk_bytes=4 << 20, timeout=60)
    return torch.equal(x, ref)


@pytest.mark.slow
def test_16mib_allreduce():
    assert launch(_big, 2, timeout=120) == [True, True]


def _subgroup():
    from weft.collectives.autotune import schedule_for
    from weft.collectives.executor import execute
    from weft.collectives.fabric import Fabric
    from weft.topology import ring

    me = dist.get_rank()
    sub = dist.new_group([1, 2])  # group ranks 0, 1 are global ranks 1, 2
    if me == 0:
        dist.barrier()  # rank 0 hosts the store: stay until the others are done
        return True
    x = torch.arange(1000, dtype=torch.float32) * me
    ref = x.clone()
    dist.all_reduce(ref, group=sub)
    ok = True
    for alg, chunk in (("ring", 400), ("packing", 1 << 20)):
        y = x.clone()
        execute(schedule_for(Fabric(ring(2)), "allreduce", alg), y, group=sub,
                chunk_bytes=chunk, timeout=30)
        ok = ok and torch.equal(y, ref)
    y = x.clone()
    execute(schedule_for(Fabric(ring(2)), "broadcast", "packing", 1), y, group=sub, timeout=30)
    dist.barrier()
    return ok and torch.equal(y, torch.arange(1000, dtype=torch.float32) * 2)


def test_subgroup_uses_group_ranks():
    """Peers are addressed by their rank in the group, not the global rank."""
    assert launch(_subgroup, 3, timeout=60) == [True, True, True]
