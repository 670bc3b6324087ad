"""Pipeline x weft DataParallel: the replicas of a stage average their gradients once per
step, after the schedule's last backward, not once per micro-batch; inside the user's
no_sync() not at all, and the gradients then equal the ones accumulated without it."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from weft.launch import launch

ROOT = Path(__file__).resolve().parents[2]
PLAN = str(ROOT / "examples" / "plans" / "pp_dp.yaml")  # pp=2 x dp=2, 1f1b, 4 micro-batches


def _rank():
    sys.path.insert(0, str(ROOT / "examples"))
    import gpt

    import weft

    torch.manual_seed(0)
    model = gpt.model(d_model=32, n_head=2, n_layer=2)
    x = gpt.example_input(16)
    pm = weft.parallelize(model, PLAN, example_input=x)
    calls = []
    real = pm.runner.comm.all_reduce

    def counted(t, *a, **k):
        calls.append(t.numel())
        return real(t, *a, **k)
    pm.runner.comm.all_reduce = counted
    xs, ys = pm.shard(x), pm.shard(torch.roll(x, -1, dims=-1))
    out = {"buckets": len(pm.runner.buckets)}
    pm.step(xs, ys, gpt.loss_fn)
    out["per_step"] = len(calls)
    grads = [p.grad.clone() for p in pm.parameters()]
    # the replicas of this stage hold the same averaged gradient
    group = pm.mesh["dp_replicate"].get_group()
    for g in grads:
        every = [torch.empty_like(g) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, g, group=group)
        out.setdefault("same", []).append(all(torch.equal(e, g) for e in every))
    calls.clear()
    for p in pm.parameters():
        p.grad = None
    with pm.no_sync():
        pm.step(xs, ys, gpt.loss_fn)
    out["in_no_sync"] = len(calls)
    pm.runner.sync_gradients()
    out["after_sync_equal"] = all(torch.allclose(p.grad, g, rtol=0, atol=1e-7)
                                  for p, g in zip(pm.parameters(), grads))
    return out


def test_stage_replicas_all_reduce_once_per_step_not_per_micro_batch():
    for r in launch(_rank, 4, timeout=180):
        assert r["per_step"] == r["buckets"] >= 1, r  # 4 micro-batches, one all-reduce per bucket
        assert all(r["same"]), r
        assert r["in_no_sync"] == 0 and r["after_sync_equal"], r
