"""What each rank holds under a plan: mesh coordinates, groups, and its piece of every parameter.

    views = describe(plan, model, world=4)
    print(format_description(plan, views))
    print(show("plan.yaml", "examples/gpt.py"))       # what `weft plan show` prints

Nothing here starts a process or touches a process group.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from torch import nn

from weft.errors import PlanError
from weft.plan.check import check, layout, local_shape
from weft.plan.format import DIMS, Mesh, Plan


def coords_of(rank: int, mesh: Mesh) -> dict[str, int]:
    """Mesh coordinates of `rank` (row-major over pp, dp_replicate, dp_shard, tp; tp fastest)."""
    out, rest = {}, rank
    for d in reversed(DIMS):
        deg = getattr(mesh, d)
        out[d] = rest % deg
        rest //= deg
    return {d: out[d] for d in DIMS}


def rank_of(coords: dict[str, int], mesh: Mesh) -> int:
    r = 0
    for d in DIMS:
        r = r * getattr(mesh, d) + coords.get(d, 0)
    return r


def groups(mesh: Mesh) -> dict[str, list[list[int]]]:
    """For each dim, the rank groups that differ only along it (its process groups)."""
    out = {}
    for d in DIMS:
        others = [x for x in DIMS if x != d]
        gs = []
        for fixed in itertools.product(*(range(getattr(mesh, o)) for o in others)):
            c = dict(zip(others, fixed))
            gs.append([rank_of({**c, d: i}, mesh) for i in range(getattr(mesh, d))])
        out[d] = gs
    return out


def stage_rank(stage: int, pp: int, schedule: str) -> int:
    """The pp coordinate running pipeline `stage`: round-robin, or a V for ZBV / DualPipeV."""
    if schedule in ("torch:ZBVZeroBubble", "torch:DualPipeV"):
        return stage if stage < pp else 2 * pp - 1 - stage
    return stage % pp


@dataclass
class RankView:
    rank: int
    coords: dict[str, int]
    stages: list[int] | None  # None: chosen by the planner at run time
    params: list[tuple[str, tuple, tuple, str]] = field(default_factory=list)  # name, full, local, how

    @property
    def numel(self) -> int:
        total = 0
        for _, _, local, _ in self.params:
            n = 1
            for s in local:
                n *= s
            total += n
        return total


def describe(plan: Plan, model: nn.Module, world: int | None = None,
             source: str | None = None) -> list[RankView]:
    """One RankView per rank; the plan is checked against `model` first (errors start with
    `source` when given)."""
    if world is None:
        world = plan.mesh.size if plan.mesh.resolved else None
        if world is None:
            raise PlanError(f"{source + ': ' if source else ''}mesh: {plan.mesh.degrees()} has an "
                            "inferred (-1) degree; give the world size (--world N)")
    plan = check(plan, model, world, source=source)
    m, fl = plan.mesh, plan.data_parallel.flavour(plan.mesh)
    params = layout(plan, model)
    views = []
    for rank in range(world):
        c = coords_of(rank, m)
        pipe = plan.pipeline
        if m.pp == 1:
            stages = [0]
        elif pipe.split == "planner":
            stages = None
        else:
            stages = [s for s in range(m.pp * pipe.stages_per_rank)
                      if stage_rank(s, m.pp, pipe.schedule) == c["pp"]]
        v = RankView(rank, c, stages)
        for p in params:
            if stages is not None and p.stage not in stages:
                continue
            local = local_shape(p, m.tp, c["tp"], m.dp_shard, c["dp_shard"])
            how = []
            if p.tp_dim is not None and m.tp > 1:
                how.append(f"tp {p.tp_style} dim {p.tp_dim} part {c['tp']}/{m.tp}")
            if p.fsdp and m.dp_shard > 1:
                how.append(f"fsdp dim 0 part {c['dp_shard']}/{m.dp_shard}")
            if m.dp_replicate > 1:
                how.append(f"replica {c['dp_replicate']}/{m.dp_replicate} ({fl})")
            v.params.append((p.name, p.shape, local, ", ".join(how) or "whole"))
        views.append(v)
    return views


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} GiB"


def format_description(plan: Plan, views: list[RankView], params: bool = True) -> str:
    """Plain text: the mesh, its groups, and per rank its coordinates and parameter pieces."""
    m = plan.mesh.resolve(len(views))
    lines = [f"plan {plan.name or '(unnamed)'}: {len(views)} rank{'s' * (len(views) != 1)}, mesh "
             + " x ".join(f"{d}={getattr(m, d)}" for d in DIMS)
             + f"; data parallel: {plan.data_parallel.flavour(m)}"
             + (f" over {m.dp_replicate} replicas" if m.dp_replicate > 1 else "")
             + (f", fully_shard over {m.dp_shard}" if m.dp_shard > 1 else "")]
    if plan.pipeline is not None and m.pp > 1:
        pp = plan.pipeline
        split = pp.split if isinstance(pp.split, str) else ", ".join(pp.split)
        lines.append(f"pipeline: split at {split}; schedule {pp.schedule}; "
                     f"{pp.microbatches} micro-batches; {pp.stages_per_rank} stage(s) per rank")
    if plan.activation_checkpoint:
        lines.append(f"activation checkpointing: {', '.join(plan.activation_checkpoint)}")
    if plan.mixed_precision is not None:
        mp = plan.mixed_precision
        lines.append(f"mixed precision: params {mp.param_dtype}, reductions {mp.reduce_dtype}")
    for d, gs in groups(m).items():
        if getattr(m, d) > 1:
            lines.append(f"{d} groups: " + " ".join("[" + ",".join(map(str, g)) + "]" for g in gs))
    for v in views:
        coords = " ".join(f"{d}={i}" for d, i in v.coords.items())
        stage = "" if m.pp == 1 else f", stage(s) {v.stages}"
        if v.stages is None:
            stage = ", stage chosen by the planner at run time"
        lines.append(f"rank {v.rank} ({coords}{stage}): {v.numel:,} parameters "
                     f"({_fmt_bytes(4 * v.numel)} in fp32)")
        if params:
            for name, full, local, how in v.params:
                lines.append(f"    {name:<36} {list(full)!s:<14} -> {list(local)!s:<14} {how}")
    return "\n".join(lines)


def _load_model(spec: str) -> nn.Module:
    from weft.model_spec import load_model

    return load_model(spec)


def show(plan: Plan | str | os.PathLike, model: nn.Module | str, world: int | None = None,
         params: bool = True) -> str:
    """The text `weft plan show PLAN --model SPEC [--world N]` prints."""
    from weft.plan.io import resolve

    source = None if isinstance(plan, (Plan, dict)) else str(plan)
    plan = resolve(plan)
    if isinstance(model, str):
        model = _load_model(model)
    return format_description(plan, describe(plan, model, world, source), params=params)
