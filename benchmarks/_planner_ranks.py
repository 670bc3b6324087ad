"""Rank functions of benchmarks/planner.py for emulated clusters (network namespaces).

`placed_time_rank` honours a plan's placement the way a launcher would: the emulator
starts process i on device i of the topology; each process then joins a fresh process
group as the mesh rank whose device it runs on (plan.placement.index(its device)), so
mesh rank r runs on placement[r]. The rendezvous store stays with the emulator's rank 0.
"""

from __future__ import annotations

import datetime


def placed_time_rank(plan_dict: dict, spec: str, batch: int, steps: int, config: dict,
                     devices: list, order: list, master: str, port: int) -> dict:
    import torch.distributed as dist

    from weft.planner.measure import time_rank

    me = dist.get_rank()
    world = dist.get_world_size()
    new_rank = order.index(devices[me])
    dist.barrier()
    dist.destroy_process_group()
    store = dist.TCPStore(master, port, world, is_master=(me == 0),
                          timeout=datetime.timedelta(seconds=300))
    dist.init_process_group("gloo", store=store, rank=new_rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))
    out = time_rank(plan_dict, spec, batch, steps, warmup=1, config=config)
    out["device"] = devices[me]
    return out
