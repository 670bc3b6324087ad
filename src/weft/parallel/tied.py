"""Tied weights under a plan: one parameter that two modules use (GPT-2's ``wte`` and
``lm_head``, a tied embedding and output head).

Single-process training gives the one tensor the sum of both uses' gradients. Two things
in a plan would quietly break that:

* **Tensor parallelism.** `parallelize_module` replaces each module's parameters with new
  DTensors, module by module, so the two uses got two tensors, each trained on half the
  gradient. `retie` points every use back at one tensor after the rules ran, which needs
  the same split for every use (a row-wise embedding and a column-wise head both split the
  vocabulary: Shard(0)); the plan check (`weft.plan.check`) refuses other rules before
  anything runs.
* **Pipeline stages.** When the uses fall in stages on different ranks, each rank holds a
  copy that gets only its own stage's gradient. As Megatron does for its embedding group,
  `TiedGrads` makes the copies equal once (from the first stage's rank) and then sums
  their gradients over the ranks holding them after every step, so every copy takes the
  full gradient and the same update. The ranks summed are those with the same data- and
  tensor-parallel coordinates, so the local shards they add are the same slice.
  Checkpoints key a copy's optimizer state by the model's first name for the weight
  (`TiedGrads.canonical`), as one process does, so they resume under any plan.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from weft.errors import PlanError
from weft.parallel.mesh import default_timeout
from weft.plan.check import ties


def retie(model: nn.Module, groups: list[list[str]], held: set[str] | None = None) -> None:
    """Point every use in each of `groups` (from `ties`, taken before the rules ran) at the
    first held use's tensor. `held`: the names this rank holds (its pipeline stages);
    None: all."""
    for names in groups:
        mine = [n for n in names if held is None or n in held]
        if len(mine) < 2:
            continue
        first = model.get_parameter(mine[0])
        for n in mine[1:]:
            p = model.get_parameter(n)
            if p is first:
                continue
            if type(p) is not type(first) or p.shape != first.shape or \
                    getattr(p, "placements", None) != getattr(first, "placements", None):
                raise PlanError(f"tensor_parallel: tied {mine[0]} and {n} came out of the rules "
                                f"as different tensors ({_describe(first)} and {_describe(p)})")
            mod, _, pname = n.rpartition(".")
            model.get_submodule(mod).register_parameter(pname, first)


def _describe(p) -> str:
    placements = getattr(p, "placements", None)
    return f"{tuple(p.shape)} {placements}" if placements is not None else f"{tuple(p.shape)}"


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if hasattr(t, "_local_tensor") else t


class TiedGrads:
    """Keeps tied copies on different pipeline ranks equal (see the module doc).

    Construct on every rank with the same arguments after tensor parallelism and
    fully_shard ran (it makes one process group per set of ranks holding a copy, in the
    same order everywhere, and copies the first stage's values to the others)."""

    def __init__(self, model: nn.Module, groups: list[list[str]], stage_names: list[set[str]],
                 stage_rank, mesh):
        self.syncs: list[tuple[object, list[str]]] = []
        self.entries: list[dict] = []
        # this rank's name of a tied weight -> the model's first name for it, where the
        # rank does not hold that one: checkpoints key the optimizer state by the first
        # name, as one process does (weft.parallel.state)
        self.canonical: dict[str, str] = {}
        if mesh is None:
            return
        pp_dim = mesh.mesh_dim_names.index("pp")
        grid = mesh.mesh.movedim(pp_dim, 0)  # (pp, the other dims...)
        me = dist.get_rank()
        mine_pp = mesh.get_coordinate()[pp_dim]
        by_pp: dict[tuple[int, ...], list[list[str]]] = {}
        for names in groups:
            stages = stages_using(names, stage_names)
            pps = tuple(sorted({stage_rank(s) for s in stages}))
            if len(pps) > 1:
                by_pp.setdefault(pps, []).append(names)
                self.entries.append({"names": names, "stages": stages, "pp_ranks": list(pps)})
        timeout = default_timeout(torch.device("cpu"))
        for pps, tied in sorted(by_pp.items()):
            sets = grid[list(pps)].reshape(len(pps), -1).t().tolist()  # one group per column
            kw = {"timeout": timeout} if timeout is not None else {}
            group, _ = dist.new_subgroups_by_enumeration(sets, **kw)
            if mine_pp not in pps:
                continue
            held = stage_names_on(stage_names, stage_rank, mine_pp)
            names = [next(n for n in g if n in held) for g in tied]
            self.canonical.update({n: g[0] for n, g in zip(names, tied) if n != g[0]})
            src = next(s for s in sets if me in s)[0]
            with torch.no_grad():
                for n in names:
                    dist.broadcast(_local(model.get_parameter(n)), src=src, group=group)
            self.syncs.append((group, [model.get_parameter(n) for n in names]))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def sync(self) -> None:
        """Sum every tied copy's gradient over the ranks holding one (no gradient: zero)."""
        for group, params in self.syncs:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                elif getattr(p.grad, "placements", None) != getattr(p, "placements", None):
                    # e.g. a row-wise embedding's gradient comes back Replicate: the copies
                    # on the other ranks hold their parameter's shard (no traffic)
                    p.grad = p.grad.redistribute(p.device_mesh, p.placements)
            grads = [_local(p.grad) for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=group)
            at = 0
            for p, g in zip(params, grads):
                n = g.numel()
                g.copy_(flat[at:at + n].view_as(g))
                at += n
    

def check_schedule(plan, groups: list[list[str]], stage_names: list[set[str]], rank_of) -> None:
    """A PlanError (before any traffic) for a zero-bubble schedule with a tied weight used
    by two stages of one rank: those schedules split a stage's backward into input and
    weight parts, and the weight part of one use lost the other's gradient (a V schedule
    on 2 ranks, a tied embedding and head: every parameter off the single-process result
    after 3 steps, 2026-12-03)."""
    from weft.parallel.pp import ZERO_BUBBLE, torch_schedule_name

    if torch_schedule_name(plan) not in ZERO_BUBBLE:
        return
    for names in groups:
        stages = stages_using(names, stage_names)
        for a in stages:
            for b in stages:
                if a < b and rank_of(a) == rank_of(b):
                    raise PlanError(
                        f"pipeline.schedule: {plan.pipeline.schedule!r} splits backward into "
                        f"input and weight parts, which a weight tied across two stages of one "
                        f"rank does not follow ({' and '.join(names)}: stages {a} and {b}, both "
                        f"on pp rank {rank_of(a)}); use 1f1b or interleaved, or cut so that the "
                        "uses share a stage")


def stages_using(names: list[str], stage_names: list[set[str]]) -> list[int]:
    """The stages (indices) whose parameter names include one of `names`."""
    return sorted({s for s, held in enumerate(stage_names) if held & set(names)})


def stage_names_on(stage_names: list[set[str]], stage_rank, pp: int) -> set[str]:
    """The parameter names of every stage that pp coordinate `pp` runs."""
    return set().union(*(held for s, held in enumerate(stage_names) if stage_rank(s) == pp))


__all__ = ["TiedGrads", "check_schedule", "retie", "stage_names_on", "ties"]
