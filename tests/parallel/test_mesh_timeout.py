"""A plan's mesh groups time out with the job's timeout, not torch's 30-minute default for
subgroups: a rank that stops answering releases its tp or dp peers within the timeout."""

import time

import torch
import torch.distributed as dist

from weft.launch import launch
from weft.plan.io import loads

PLAN = ("format: weft.plan/1\nname: t\nmesh: {dp_replicate: 2, tp: 2}\n"
        "tensor_parallel: [{module: fc, style: colwise}]\n")


def _rank(plan_text: str) -> dict:
    from weft.parallel.mesh import build_mesh

    mesh = build_mesh(loads(plan_text, "plan.yaml"), torch.device("cpu"))
    out = {d: str(mesh[d].get_group()._get_backend(torch.device("cpu")).options._timeout)
           for d in ("dp_replicate", "tp")}
    if dist.get_rank() == 1:  # stops answering: never joins its tp group's all-reduce
        time.sleep(8)
        return out
    if dist.get_rank() == 0:
        t0 = time.monotonic()
        try:
            dist.all_reduce(torch.ones(1), group=mesh["tp"].get_group())
            out["tp_all_reduce"] = "returned"
        except Exception as exc:  # noqa: BLE001 - the timeout is what is tested
            out["tp_all_reduce"] = type(exc).__name__
        out["waited_s"] = time.monotonic() - t0
    return out


def test_mesh_groups_time_out_with_the_job_timeout():
    res = launch(_rank, 4, args=(PLAN,), timeout=3)
    for r in res:
        assert r["dp_replicate"] == r["tp"] == "0:00:03", r
    assert res[0]["tp_all_reduce"] != "returned" and res[0]["waited_s"] < 7, res[0]
