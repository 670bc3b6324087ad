"""Data-parallel terms of a plan (`weft.planner.plan_cost`): gradient all-reduce, and the
collectives fully_shard issues, counted the way the runtime issues them.

fully_shard (torch's FSDP2, `weft.parallel.fsdp`): every unit (each module matched by
`data_parallel.shard_modules`, and each stage's root holding the rest) all-gathers its
parameters before its forward and, when resharded after the forward (every unit when
`reshard_after_forward` is set, else torch's default: all but the root), again before its
backward, then reduce-scatters its gradients once per step (HSDP: and all-reduces the
shard over dp_replicate). Under a pipeline schedule torch keeps a unit unsharded through
the backwards of the step (`set_reshard_after_backward(False)` until the last), so a
backward gathers only when a forward resharded the unit just before it, and the
reduce-scatters run after the last backward (`perform_reduce_grad`); `fsdp_gathers`
replays torch's order of forwards and backwards on one stage for that count. Each call
costs the collective (`Comm`) plus ``Costs.fsdp_call_s`` (the copy in and out and the
hooks around it, measured by `weft.planner.runtime_costs`).

Overlap: ``Costs.overlap`` is the fraction of the compute under which an asynchronous
collective can run (weft's DataParallel all-reduces its buckets asynchronously from
gradient hooks); 1 is all of it, as on a GPU with communication streams; on CPU ranks
that share their cores the copies and reductions compete with the compute.
``Costs.fsdp_overlap`` is the same for fully_shard, whose collectives are asynchronous
only where the backend runs them on streams: with gloo, FSDP2 calls them blocking
(``unshard_async_op`` is off by default), so they cannot overlap at all (0). One
gather (the largest, standing for the first) and the last reduce-scatter (the root's) are
never hidden.
"""

from __future__ import annotations

from collections import Counter

from weft.planner.shape import Shape, unit_layers


def stage_order(schedule: str, stage: int, stages: int, microbatches: int) -> str:
    """The forwards (F) and backwards (B) of one pipeline stage in one step, in torch's
    order: GPipe all forwards first; 1F1B (torch's Schedule1F1B) min(M, S - s) forwards,
    then backward and forward in turn, then the remaining backwards."""
    m = microbatches
    if schedule == "gpipe":
        return "F" * m + "B" * m
    warm = min(m, stages - stage)
    order, f, b = "F" * warm, warm, 0
    while b < m:
        order += "B"
        b += 1
        if f < m:
            order += "F"
            f += 1
    return order


def reshards(shape: Shape, root: bool) -> bool:
    """Whether a unit (or the stage's root) reshards after its forward."""
    return (not root) if shape.reshard is None else shape.reshard


def fsdp_gathers(shape: Shape, stage: int, root: bool = False) -> tuple[int, int]:
    """(forward, backward) all-gathers of one fully_shard unit of `stage` per step."""
    reshard = reshards(shape, root)
    if shape.pp == 1:
        return 1, (1 if reshard else 0)
    sched = "1f1b" if shape.schedule == "interleaved" else shape.schedule
    unsharded, fwd, bwd = False, 0, 0
    for a in stage_order(sched, stage, shape.stages, shape.microbatches):
        if not unsharded:
            fwd, bwd = (fwd + 1, bwd) if a == "F" else (fwd, bwd + 1)
            unsharded = True
        if a == "F" and reshard:
            unsharded = False
    return fwd, bwd


def stage_units(shape: Shape, workload, layers: range) -> tuple[list[tuple[int, ...]],
                                                                 tuple[int, ...]]:
    """(unit layer groups that fall in a stage of layers `layers`, the stage's root: the
    layers of no unit, () when every layer is in one)."""
    inside = set(layers)
    groups = [g for g in (tuple(k for k in u if k in inside)
                          for u in unit_layers(shape, workload)) if g]
    covered = {k for g in groups for k in g}
    return groups, tuple(k for k in layers if k not in covered)


def units_of(shape: Shape, workload, layers: range) -> list[tuple[int, ...]]:
    """The fully_shard units of one stage (its layers `layers`): the unit layer groups that
    fall in it, then the stage's root with the layers of no unit."""
    groups, root = stage_units(shape, workload, layers)
    return groups + ([root] if root else [])


def sharded_sync(model, shape: Shape, comm, groups, r: int, stages) -> tuple[float, float, Counter]:
    """(total, exposed seconds, calls) of fully_shard on pipeline rank r per step."""
    costs, a, t = model.costs, model._arrays, shape.tp
    ds = groups["dp_shard"][r] if shape.dp_shard > 1 else None
    dr = groups["dp_replicate"][r] if shape.dp_replicate > 1 else None
    if ds is None:  # fully_shard over dp_replicate alone (replicate fsdp, dp_shard 1)
        ds, dr = dr, None
    calls: Counter = Counter()
    fwd = bwd = rs_all = ar_all = first = last = 0.0
    mine = [st for st in stages if st["stage"] % shape.pp == r]
    for st in mine:
        groups, root = stage_units(shape, model.workload, range(*st["layers"]))
        for unit, is_root in [(g, False) for g in groups] + ([(root, True)] if root else []):
            nf, nb = fsdp_gathers(shape, st["stage"], root=is_root)
            u = float(sum(a["p_rep"][k] + a["p_split"][k] / t for k in unit))
            if u <= 0:
                continue
            ag = comm.collective("all_gather", ds, u) + costs.fsdp_call_s
            rs = comm.collective("reduce_scatter", ds, u) + costs.fsdp_call_s
            fwd += nf * ag
            bwd += nb * ag
            rs_all += rs
            calls["all_gather"] += nf + nb
            calls["reduce_scatter"] += 1
            if dr is not None:
                ar_all += comm.collective("allreduce", dr, u / ds.size)
                calls["allreduce"] += 1
            first, last = max(first, ag), rs  # the largest gather; the root's scatter, last
    m = shape.microbatches
    window_f = m * sum(st["forward_s"] for st in mine) * costs.fsdp_overlap
    window_b = m * sum(st["backward_s"] for st in mine) * costs.fsdp_overlap
    total = fwd + bwd + rs_all + ar_all
    if shape.pp == 1:  # reduce-scatters follow each unit's backward
        back = max(bwd + rs_all - window_b, last)
    else:  # after the last backward (perform_reduce_grad)
        back = max(bwd - window_b, 0.0) + rs_all
    return total, max(fwd - window_f, first) + back + ar_all, calls


def replicated_sync(model, shape: Shape, comm, groups, r: int, stages) -> tuple[float, float,
                                                                               Counter]:
    """(total, exposed seconds, calls) of the gradient all-reduce over dp_replicate in
    buckets of `bucket_mb`: without a pipeline it may overlap the backward (gradient
    hooks); under a pipeline schedule it runs after the last backward, not overlapped
    (`weft.parallelize` averages a stage's micro-batches once, after the schedule)."""
    mine = [st for st in stages if st["stage"] % shape.pp == r]
    dr = groups["dp_replicate"][r]
    sizes = _rank_buckets(model, shape, mine)
    times = {b: comm.collective("allreduce", dr, b) for b in set(sizes)}
    total = sum(times[b] for b in sizes)
    last = times[sizes[-1]] if sizes else 0.0
    window_b = 0.0 if shape.pp > 1 else \
        sum(st["backward_s"] for st in mine) * model.costs.overlap
    calls = Counter({"allreduce": len(sizes)})
    return total, max(total - window_b, last), calls


def replicated_algorithms(model, shape: Shape, comm, groups, r: int, stages) -> str:
    """The algorithms of the data-parallel all-reduce's buckets on pipeline rank r, as
    `replicated_sync` charges them (the ring, "measured", or weft's choice with its piece
    size), for `weft plan explain`."""
    sizes = _rank_buckets(model, shape, [st for st in stages if st["stage"] % shape.pp == r])
    dr = groups["dp_replicate"][r]
    return ", ".join(dict.fromkeys(comm.algorithm("allreduce", dr, b) for b in sizes))


def _rank_buckets(model, shape: Shape, mine) -> list[float]:
    """The gradient buckets (bytes) of the parameters of the stages `mine`."""
    a, t = model._arrays, shape.tp
    P = float(sum(a["p_rep"][k] + a["p_split"][k] / t for st in mine
                  for k in range(*st["layers"])))
    return bucket_bytes(P, shape.bucket_mb * 2**20)


def bucket_bytes(nbytes: float, cap: float) -> list[float]:
    """The gradient buckets of `nbytes` of parameters, in the order they are reduced, as
    weft's DataParallel (and torch DDP) make them: the first one small
    (`FIRST_BUCKET_BYTES`) so the communication starts early in the backward, the rest of
    at most `cap` bytes. (The runtime fills buckets with whole parameters, so its
    boundaries fall a little earlier than these.)"""
    from weft.parallel.data import FIRST_BUCKET_BYTES

    if nbytes <= 0:
        return []
    first = min(nbytes, FIRST_BUCKET_BYTES, cap)
    full, rest = divmod(nbytes - first, cap)
    return [first] + [cap] * int(full) + ([rest] if rest else [])


def optimizer_time(model, shape: Shape, layers: list[int]) -> float:
    """The optimizer step over `layers` on one rank: bytes at ``optimizer_bw`` plus a cost
    per parameter tensor, higher for DTensors (fully_shard's, and tensor-parallel modules')."""
    costs, a, wl = model.costs, model._arrays, model.workload
    P = float(sum(a["p_rep"][k] + a["p_split"][k] / shape.tp for k in layers))
    shard = shape.dp_shard if shape.sharded else 1
    t = P / shard / costs.optimizer_bw if costs.optimizer_bw else 0.0
    tensors = sum(wl.layers[k].tensors for k in layers)
    if shape.sharded and shape.dp > 1:
        dtensors = tensors
    elif shape.tp > 1:
        dtensors = sum(wl.layers[k].tp_tensors for k in layers)
    else:
        dtensors = 0
    return t + (tensors - dtensors) * costs.optimizer_tensor_s + \
        dtensors * costs.dtensor_tensor_s
