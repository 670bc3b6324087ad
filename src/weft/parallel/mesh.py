"""The device mesh of a plan: torch's DeviceMesh with the four named dims, and this rank's place."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from weft.plan.format import DIMS, Plan


def device_for_backend() -> torch.device:
    """cuda:LOCAL_RANK under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def device_memory(device: torch.device) -> float | None:
    """Total memory of `device` in bytes where torch knows it (CUDA), else None."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return None


def build_mesh(plan: Plan, device: torch.device):
    """A DeviceMesh over all ranks with dims (pp, dp_replicate, dp_shard, tp), tp fastest.

    Size-1 dims are kept so that every slice the runtime asks for exists; the plan's
    mesh must be resolved (`weft.plan.check`) first.
    """
    from torch.distributed.device_mesh import init_device_mesh

    shape = tuple(getattr(plan.mesh, d) for d in DIMS)
    return init_device_mesh(device.type, shape, mesh_dim_names=DIMS)


def coordinates(mesh) -> dict[str, int]:
    """This rank's coordinate along every dim (all zeros without a mesh)."""
    if mesh is None:
        return {d: 0 for d in DIMS}
    return dict(zip(DIMS, mesh.get_coordinate()))


def dp_rank_size(plan: Plan, coords: dict[str, int]) -> tuple[int, int]:
    """(index of this rank's data replica, number of replicas): over dp_replicate x dp_shard.

    Ranks that differ only in tp (or pp) coordinate share a replica and read the same batch.
    """
    m = plan.mesh
    return coords["dp_replicate"] * m.dp_shard + coords["dp_shard"], m.dp
