"""The device groups of a plan's mesh under a placement, and their `Groups` made lazily.

    groups = mesh_groups(shape, placement)      # {dim: per pp coordinate: device groups}
    dims = LazyDims(comm, groups)               # dims["tp"][0]: the Groups of stage 0's tp
"""

from __future__ import annotations

import numpy as np

from weft.plan.format import DIMS
from weft.planner.comm import Comm
from weft.planner.shape import Shape


def mesh_groups(shape: Shape, placement: list[str]) -> dict[str, list[list[list[str]]]]:
    """{dim: per pp coordinate, the device groups along dim} (for pp: the pipelines, once).
    Groups and their members are in `weft.plan.describe.groups`' order."""
    dims = (shape.pp, shape.dp_replicate, shape.dp_shard, shape.tp)
    arr = np.empty(len(placement), dtype=object)
    arr[:] = placement
    arr = arr.reshape(dims)
    out: dict[str, list[list[list[str]]]] = {}
    for k, d in enumerate(DIMS):
        moved = np.moveaxis(arr, k, -1)
        if d == "pp":
            out[d] = [moved.reshape(-1, dims[k]).tolist()]
        else:
            out[d] = [moved[s].reshape(-1, dims[k]).tolist() for s in range(shape.pp)]
    return out


class LazyDims(dict):
    """dim -> per pp coordinate -> Groups, made on first use."""

    def __init__(self, comm: Comm, groups: dict):
        super().__init__()
        self.comm, self.raw = comm, groups

    def __missing__(self, dim: str):
        value = LazyList(self.comm, self.raw[dim])
        self[dim] = value
        return value


class LazyList(list):
    def __init__(self, comm: Comm, per_stage):
        super().__init__([None] * len(per_stage))
        self.comm, self.raw = comm, per_stage

    def __getitem__(self, r):
        v = super().__getitem__(r)
        if v is None:
            v = self.comm.groups(self.raw[r])
            super().__setitem__(r, v)
        return v
