"""Peak memory per device of a plan, term by term.

    mem = stage_memory(shape, workload, stage=0)
    mem.peak, mem.terms       # bytes; {"parameters": ..., "activations": ..., ...}

For the ranks of one pipeline stage (layers [i, j) of the workload), with P the stage's
parameter bytes at the plan's tp degree (replicated + split / tp) and S the shard factor
(dp_shard under fully_shard, else 1):

* parameters P / S, and optimizer state ``optimizer_states`` x P / S (Adam: 2);
* gradients: P / S under fully_shard; with weft's DataParallel its flat bucket buffers
  (P, kept between steps: the gradients are views of them); with torch DDP the gradients
  and its buckets (2 P); without data parallelism P, freed by ``zero_grad``;
* fully_shard's unsharded buffers (the units of `weft.planner.dp_cost.stage_units`): a
  root that does not reshard after its forward (torch's default) holds its parameters
  gathered from its forward to its backward; besides it, the largest other unit's
  parameters twice (the unit running and the next one prefetched), and the largest
  unit's unsharded gradients in the backward;
* activations: what autograd saves per sample (replicated + split / tp) x micro-batch
  size x the micro-batches in flight on the stage (1 without a pipeline; GPipe: all M;
  1F1B: min(pp - stage, M); interleaved: that plus one per extra chunk), or with
  activation checkpointing the inputs of the recomputed layers plus one layer's saved
  activations (recomputed in the backward); bf16 halves activations;
* pipeline buffers: each micro-batch's received activation and gradient at the stage's
  boundaries (torch.distributed.pipelining keeps one buffer per micro-batch);
* optimizer step temporaries: the largest parameter (Adam's per-tensor update).

The peak is parameters + optimizer state + the larger of the forward/backward working set
(activations, gradients kept between steps, fully_shard buffers; in a pipeline with
several micro-batches also the gradients, which grow while later micro-batches'
activations are still held) and the step's working set (gradients, step temporaries). `weft.plan.check.memory_per_rank` counts the model
state only; this adds what training holds on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from weft.planner.dp_cost import reshards, stage_units
from weft.planner.shape import Shape
from weft.planner.workload import Workload


@dataclass
class Memory:
    terms: dict[str, float] = field(default_factory=dict)
    peak: float = 0.0


def in_flight(shape: Shape, stage: int) -> int:
    """Micro-batches whose activations a rank of pipeline stage `stage` holds at once."""
    m = shape.microbatches
    if shape.pp == 1:
        return 1
    if shape.schedule == "gpipe":
        return m
    rank = stage % shape.pp
    k = min(shape.pp - rank, m)
    if shape.schedule == "interleaved":
        k = min(m, k + shape.stages_per_rank - 1)
    return k


def _arrays(workload: Workload) -> dict:
    got = workload.__dict__.get("_memory_arrays")
    if got is None or got["n"] != len(workload):
        ls = workload.layers
        got = {"n": len(ls), "p_rep": np.array([l.params.rep for l in ls]),
               "p_split": np.array([l.params.split for l in ls]),
               "s_rep": np.array([l.saved.rep for l in ls]),
               "s_split": np.array([l.saved.split for l in ls]),
               "in": np.array([l.in_bytes for l in ls]),
               "out": np.array([l.out_bytes for l in ls])}
        workload.__dict__["_memory_arrays"] = got
    return got


def stage_memory(shape: Shape, workload: Workload, stage: int = 0) -> Memory:
    """Peak bytes per rank of pipeline rank `stage` (all its chunks for interleaved)."""
    t, S = shape.tp, (shape.dp_shard if shape.sharded else 1)
    if shape.sharded and shape.flavour == "fsdp" and shape.dp_shard == 1:
        S = shape.dp_replicate  # fully_shard over the replicate dim (ZeRO-3 on dp_replicate)
    chunks = [c for c in range(shape.stages) if c % shape.pp == stage % shape.pp] \
        if shape.stages_per_rank > 1 else [stage]
    layers = np.array([k for c in chunks for k in range(*shape.bounds[c])], dtype=int)
    a = _arrays(workload)
    params = a["p_rep"][layers] + a["p_split"][layers] / t
    saved = a["s_rep"][layers] + a["s_split"][layers] / t
    P = float(params.sum())
    b = shape.micro_batch
    act_scale = 0.5 if shape.mixed and workload.param_dtype_bytes == 4 else 1.0
    ckset = set(shape.checkpoint)
    ck = np.array([k in ckset for k in layers.tolist()], dtype=bool)
    kept = float(saved[~ck].sum() + a["in"][layers][ck].sum())
    redo = float(saved[ck].max(initial=0.0))
    act = (in_flight(shape, stage) * kept + redo) * b * act_scale
    terms = {"parameters": P / S,
             "optimizer state": shape.optimizer_states * P / S}
    fsdp_buf = 0.0
    unit = float(params.max(initial=0.0))
    if shape.sharded:
        fsdp_buf = _fsdp_buffers(shape, workload, layers, params) * (1 - 1 / S)
        grads_kept, grads_step = P / S, P / S
    elif shape.flavour == "weft" and shape.dp > 1:
        grads_kept, grads_step = P, P
    elif shape.flavour == "ddp" and shape.dp > 1:
        grads_kept, grads_step = P, 2 * P
    else:
        grads_kept, grads_step = 0.0, P
    if shape.pp > 1 and shape.microbatches > 1:
        grads_kept = max(grads_kept, grads_step)
        first, last = int(layers[0]), int(layers[-1])
        edge = (a["in"][first] if first > 0 else 0.0) + \
            (a["out"][last] if last < len(workload) - 1 else 0.0)
        terms["pipeline buffers"] = 2 * shape.microbatches * b * float(edge) * act_scale
        act += terms["pipeline buffers"]
    temp = unit / max(1, S)
    terms["gradients"] = max(grads_kept, grads_step)
    terms["activations"] = act - terms.get("pipeline buffers", 0.0)
    if fsdp_buf:
        terms["fully_shard buffers"] = fsdp_buf
    terms["step temporaries"] = temp
    working = max(act + grads_kept + fsdp_buf, grads_step + temp)
    peak = terms["parameters"] + terms["optimizer state"] + working
    return Memory(terms, peak)


def _fsdp_buffers(shape: Shape, workload: Workload, layers, params) -> float:
    """Unsharded bytes fully_shard holds at once on a stage of `layers` (their bytes
    `params` at the plan's tp degree): a kept root, plus the largest other unit twice,
    plus the largest unit's gradients."""
    size = dict(zip(layers.tolist(), params.tolist()))
    groups, root = stage_units(shape, workload, layers.tolist())
    units = [sum(size[k] for k in g) for g in groups]
    root_b = sum(size[k] for k in root)
    kept = root_b if root and not reshards(shape, root=True) else 0.0
    others = units + ([root_b] if root and not kept else [])
    return kept + 2 * max(others, default=0.0) + max(units + [root_b], default=0.0)


def plan_memory(shape: Shape, workload: Workload) -> tuple[float, int, Memory]:
    """(peak bytes on the busiest rank, its pipeline rank, its terms)."""
    if shape.pp == 1:
        m = stage_memory(shape, workload, 0)
        return m.peak, 0, m
    key = (shape, id(workload))
    cache = workload.__dict__.setdefault("_memory_cache", {})
    got = cache.get(key)
    if got is None:
        best = None
        for s in range(shape.pp):
            m = stage_memory(shape, workload, s)
            if best is None or m.peak > best[0]:
                best = (m.peak, s, m)
        if len(cache) > 50000:
            cache.clear()
        got = cache[key] = best
    return got
