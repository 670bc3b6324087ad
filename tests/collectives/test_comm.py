"""WeftCommunicator (the Communicator protocol), the DDP hook, and bad input."""

import torch
import torch.distributed as dist
from torch import nn

from weft.launch import launch


def _comm_ops():
    from weft.collectives import Communicator, WeftCommunicator

    n, me = dist.get_world_size(), dist.get_rank()
    comm = WeftCommunicator(f"ring:{n}", algorithm="auto")
    assert isinstance(comm, Communicator) and comm.rank == me and comm.world_size == n
    out = {}
    x = torch.arange(10, dtype=torch.float32) * (me + 1)
    comm.all_reduce(x, op="avg")
    out["avg"] = x.tolist()
    works = []
    ys = [torch.full((1000 * (i + 1),), float(me + i)) for i in range(3)]
    for y in ys:
        works.append(comm.all_reduce(y, async_op=True))
    for w in reversed(works):  # waiting out of order still runs them in issue order
        w.wait()
    out["async"] = [float(y[0]) for y in ys]
    b = torch.full((5,), float(me))
    comm.broadcast(b, src=n - 1)
    out["bcast"] = b.tolist()
    r = torch.ones(7, dtype=torch.int64) * me
    comm.reduce(r, dst=1)
    out["reduce"] = r.tolist() if me == 1 else None
    inp = torch.arange(3 * n, dtype=torch.float32) + me
    shard = torch.empty(3)
    comm.reduce_scatter(shard, inp)
    out["rs"] = shard.tolist()
    full = torch.empty(2 * n, dtype=torch.int32)
    comm.all_gather(full, torch.tensor([me, -me], dtype=torch.int32))
    out["ag"] = full.tolist()
    fixed = WeftCommunicator(f"ring:{n}", algorithm="dbtree", chunk_bytes=16)
    z = torch.arange(100.0) + me
    fixed.all_reduce(z)
    out["fixed"] = z.tolist()
    out["history"] = [h[2] for h in comm.history]
    return out


def test_weft_communicator_ops():
    n = 3
    res = launch(_comm_ops, n, timeout=60)
    for me, o in enumerate(res):
        assert o["avg"] == [i * 2.0 for i in range(10)]  # mean of (1,2,3) * i
        assert o["async"] == [sum(r + i for r in range(n)) for i in range(3)]
        assert o["bcast"] == [float(n - 1)] * 5
        assert o["rs"] == [float(n * (3 * me + j) + 3) for j in range(3)]
        assert o["ag"] == [v for r in range(n) for v in (r, -r)]
        assert o["fixed"] == [n * i + 3.0 for i in range(100)]
        assert o["history"]
    assert res[1]["reduce"] == [3] * 7


def _background():
    import time

    from weft.collectives import WeftCommunicator

    n, me = dist.get_world_size(), dist.get_rank()
    comm = WeftCommunicator(f"ring:{n}", algorithm="packing", chunk_bytes=4096)
    xs = [torch.arange(5000 * (i + 1), dtype=torch.float32) * (me + 1) + i for i in range(3)]
    refs = [x.clone() for x in xs]
    for r in refs:
        dist.all_reduce(r)
    works = [comm.all_reduce(x, async_op=True) for x in xs]
    b = torch.full((3000,), float(me))
    works.append(comm.broadcast(b, src=n - 1, async_op=True))
    # never wait(): the communication thread alone must finish them (the deadline only
    # keeps a broken implementation from hanging the test)
    deadline = time.monotonic() + 60
    while not all(w.is_completed() for w in works) and time.monotonic() < deadline:
        time.sleep(0.01)
    done = [w.is_completed() for w in works]
    equal = [torch.equal(x, r) for x, r in zip(xs, refs)] + [bool((b == n - 1).all())]
    fut = comm.all_reduce(torch.ones(10), op="avg", async_op=True).get_future()
    avg = fut.wait().tolist()
    comm.close()
    return done, equal, avg


def test_async_collectives_progress_without_wait():
    for done, equal, avg in launch(_background, 3, timeout=90):
        assert done == [True] * 4
        assert equal == [True] * 4
        assert avg == [1.0] * 10


def _measured():
    from weft.collectives import WeftCommunicator, autotune
    from weft.collectives.schedule import check

    n, me = dist.get_world_size(), dist.get_rank()
    comm = WeftCommunicator(f"ring:{n}", measure=True)
    calls = []
    make = comm._measure

    def counting(*a):
        timed = make(*a)
        return lambda c: calls.append(c.algorithm) or timed(c)

    comm._measure = counting
    x = torch.arange(30000, dtype=torch.float32) * (me + 1)
    ref = x.clone()
    dist.all_reduce(ref)
    comm.all_reduce(x)
    first = len(calls)
    y = torch.arange(30001, dtype=torch.float32) - me  # same size bucket: cached choice
    ref2 = y.clone()
    dist.all_reduce(ref2)
    comm.all_reduce(y)
    key = [k for k in autotune._CHOICES if k[1] == "allreduce" and k[-1] is False]
    chosen = autotune._CHOICES[key[0]]
    check(chosen.schedule)
    model_top = autotune.shortlist(autotune.ranked(comm.fabric, "allreduce", 30000 * 4, 0,
                                                   comm.params), 3)
    return {"equal": [torch.equal(x, ref), torch.equal(y, ref2)], "first": first,
            "calls": len(calls), "distinct": len({autotune.family(a) for a in calls}), "keys": len(key),
            "history": [h[2:] for h in comm.history],
            "chosen": (chosen.algorithm, chosen.chunk_bytes),
            "in_top": (chosen.algorithm, chosen.chunk_bytes) in
            [(c.algorithm, c.chunk_bytes) for c in model_top]}


def test_measured_autotune_choice_is_cached_valid_and_correct():
    res = launch(_measured, 3, timeout=90)
    for o in res:
        assert o["equal"] == [True, True]
        # the model's best 3 algorithm families timed once, then cached
        assert o["first"] == 3 and o["calls"] == 3
        assert o["distinct"] == 3  # three families, not one at three piece sizes
        assert o["keys"] == 1 and o["in_top"]
        assert o["history"] == [o["chosen"]] * 2  # both calls ran the measured choice
    assert len({tuple(o["chosen"]) for o in res}) == 1  # every rank chose the same


def _ddp():
    from torch.nn.parallel import DistributedDataParallel as DDP

    from weft.collectives import ddp_hook

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    ref = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    ref.load_state_dict(net.state_dict())
    model = DDP(net)
    comm = ddp_hook.register(model, "ring:2")  # the one line
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 8, generator=g), torch.randn(16, 2, generator=g)
    me = dist.get_rank()
    nn.functional.mse_loss(model(x[me * 8:(me + 1) * 8]), y[me * 8:(me + 1) * 8]).backward()
    nn.functional.mse_loss(ref(x), y).backward()
    return all(torch.allclose(p.grad, q.grad, atol=1e-6)
               for p, q in zip(model.module.parameters(), ref.parameters())) and bool(comm.history)


def test_ddp_comm_hook_gives_the_full_batch_gradient():
    assert launch(_ddp, 2, timeout=60) == [True, True]


def _data_parallel():
    from weft.collectives import WeftCommunicator
    from weft.parallel import data_parallel

    torch.manual_seed(dist.get_rank())  # different init: the runtime must broadcast
    model = nn.Linear(4, 3)
    dp = data_parallel(model, communicator=WeftCommunicator("ring:2"))
    x = torch.ones(2, 4) * (dist.get_rank() + 1)
    dp(x).sum().backward()
    return [model.weight.detach().clone(), model.weight.grad.clone()]


def test_works_as_the_data_parallel_runtimes_communicator():
    res = launch(_data_parallel, 2, timeout=60)
    assert torch.equal(res[0][0], res[1][0])
    assert torch.allclose(res[0][1], torch.full((3, 4), 3.0))  # mean of 2*1 and 2*2


def _bad():
    from weft.collectives import WeftCommunicator
    from weft.errors import WeftError
    from weft.topology import Topology, full_mesh

    split = Topology(name="split")
    for d in ("a", "b"):
        split.add_device(d)
    cases = {
        # the topology names a rank the process group does not have
        "extra_rank": lambda: WeftCommunicator(full_mesh(3), devices=["gpu0", "gpu1", "gpu2"]),
        "too_many": lambda: WeftCommunicator(full_mesh(4)),
        "disconnected": lambda: WeftCommunicator(split),
        "algorithm": lambda: WeftCommunicator("ring:2", algorithm="bogus"),
    }
    out = {}
    for kind, make in cases.items():
        try:
            make()
            out[kind] = "no error"
        except (WeftError, ValueError) as exc:
            out[kind] = str(exc)
    # nothing was sent: the group still works and no stray message is pending
    x = torch.ones(3)
    dist.all_reduce(x)
    out["after"] = x.tolist()
    return out


def test_bad_input_fails_before_sending():
    for o in launch(_bad, 2, timeout=30):
        assert "3 devices given for a process group of 2" in o["extra_rank"]
        assert "4 compute devices but the process group has 2" in o["too_many"]
        assert "disconnected" in o["disconnected"]
        assert "unknown algorithm 'bogus'" in o["algorithm"]
        assert o["after"] == [2.0] * 3
