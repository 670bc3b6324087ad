"""Fully sharded data parallelism from a plan: torch's fully_shard (FSDP2), HSDP on a 2-D mesh.

Units: every module matched by `data_parallel.shard_modules` (innermost first), then
the root. `data_parallel.reshard_after_forward` unset is torch's default: the units
reshard after their forward, the root keeps its parameters gathered until its backward,
which needs them first (what `fully_shard` written by hand does; resharding the root
too, as `true` does, costs one more all-gather of the root per step, M more under a
GPipe schedule of M micro-batches). With dp_replicate > 1 and replicate 'fsdp' the mesh
is (dp_replicate, dp_shard): parameters are sharded within a replica group and averaged
across groups (HSDP). Tensor-parallel parameters (DTensors on the tp dim of the same
root mesh) are sharded along dp on top of their tp shards (FSDP + TP).
"""

from __future__ import annotations

import torch
from torch import nn

from weft.plan.check import shard_units
from weft.plan.format import Plan

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def dp_mesh(plan: Plan, mesh):
    """The mesh fully_shard runs on: 1-D dp_shard, or 2-D (dp_replicate, dp_shard) for HSDP."""
    if plan.mesh.dp_replicate > 1:
        return mesh["dp_replicate", "dp_shard"]
    return mesh["dp_shard"]


def fsdp2():
    """(MixedPrecisionPolicy, fully_shard): public in torch.distributed.fsdp from torch 2.6,
    under torch.distributed._composable.fsdp in 2.5 (the oldest torch weft declares)."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
    return MixedPrecisionPolicy, fully_shard


def apply_fully_shard(model: nn.Module, plan: Plan, mesh) -> nn.Module:
    MixedPrecisionPolicy, fully_shard = fsdp2()

    kw = {"mesh": dp_mesh(plan, mesh)}
    mp = plan.mixed_precision
    if mp is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype(mp.param_dtype),
                                               reduce_dtype=dtype(mp.reduce_dtype))
    reshard = plan.data_parallel.reshard_after_forward
    modules = dict(model.named_modules())
    for names in shard_units(plan, model):  # innermost first; a tied weight's units together
        unit = modules[names[0]] if len(names) == 1 else [modules[n] for n in names]
        fully_shard(unit, reshard_after_forward=True if reshard is None else reshard, **kw)
    # unset: the root keeps its parameters (torch's default for it, spelled out: torch
    # before 2.6 takes no None)
    fully_shard(model, reshard_after_forward=False if reshard is None else reshard, **kw)
    return model
