"""Rank functions of benchmarks/planner.py for emulated clusters (network namespaces).

`placed_time_rank` honours a plan's placement the way a launcher would: the emulator
starts process i on device i of the topology; each process then re-joins as the mesh
rank whose device it runs on (`weft.planner.placement.join_as_placed`), so mesh rank r
runs on placement[r]. The rendezvous store stays with the emulator's rank 0.
"""

from __future__ import annotations


def placed_time_rank(plan_dict: dict, spec: str, batch: int, steps: int, config: dict,
                     devices: list, order: list, master: str, port: int) -> dict:
    import torch.distributed as dist

    from weft.planner.measure import time_rank
    from weft.planner.placement import join_as_placed

    me, world = dist.get_rank(), dist.get_world_size()
    join_as_placed(order, devices[me], master, port, world, is_store=(me == 0), timeout_s=600)
    out = time_rank(plan_dict, spec, batch, steps, config=config, warmup=1)
    out["device"] = devices[me]
    return out
