"""What the runtime costs beyond the model and the links, measured on the ranks themselves.

    rc = measure_runtime_costs(world=4)          # local gloo ranks, a few seconds
    model = PlanModel(workload, topology, rc.apply(Costs(collective=params)))

The plan cost model (`weft.planner.plan_cost`, `weft.planner.dp_cost`) charges these
things that the workload profile and the collectives' cost model do not see; they depend
on the machine, the backend and torch, so they are measured, not assumed:

* ``overlap``: the all-reduce time of weft's DataParallel hidden per second of its
  backward, measured on a model of about the planned parameter count
  (`weft.planner.dp_overlap`, 3x the rounds of the other figures). GPUs with
  communication streams reach about 1; CPU ranks that share their cores with gloo's
  copies and reductions get about 0. (Until 2026-12-03 it was the next figure's, which
  came out 0.33, 0.78 and 0.40 in three calibrations and 0.00-0.14 in the others.)
* ``fsdp_overlap``: the fraction of the compute under which an asynchronous collective
  can run (every rank times a compute loop alone, an all-gather alone, and the all-gather
  issued asynchronously around the same compute; ``(compute + gather - both) /
  min(compute, gather)`` per round, the median over 3x the rounds, clipped to [0, 1])
  times the share of fully_shard's collectives that it issues asynchronously, watched in
  the run below (with gloo, FSDP2 issues them blocking, so 0).
* ``fsdp_call_s``: fully_shard's own cost per all-gather or reduce-scatter (copying
  parameters into and out of the flat buffer, hooks, DTensor bookkeeping): `units`
  Linear layers each their own fully_shard unit train one forward + backward; minus the
  same model unsharded and minus the raw collectives of the same sizes timed in the same
  round, per call (three per unit: gather, gather again for the backward,
  reduce-scatter), the median over 3x the rounds of each round's figure.
* ``optimizer_tensor_s`` and ``optimizer_bw``: Adam's step over many small tensors
  against two of the same bytes (per tensor), and two small against two of
  ``optimizer_numel`` elements in all (per byte): the size of the model planned, when the
  caller knows it (`weft.planner.local_costs` passes the workload's parameters), else 32
  times the small ones, with gradients of a training step's size. Adam's rate per byte
  depends on the size (whether the parameters, gradients and two state tensors stay in
  the caches) and on the data: on 4 ranks sharing 2 cores (2026-12-02) Adam over 2M
  elements with all-zero gradients ran at 0.27-0.40 GB/s, and the planner benchmark's GPT
  (0.83M parameters) took 4.5-5.5 ms per step where that rate charged 10.5-13.9 ms.
* ``dtensor_tensor_s``: Adam's step over the many small tensors as fully_shard's
  DTensors, per tensor, less their local bytes at ``optimizer_bw``.
* ``tp_tensor_s``: what tensor parallelism costs per parameter tensor of a parallelised
  module and micro-batch beyond its local compute and its collectives (DTensor's dispatch
  of every op, the input/output redistribution hooks): `units` Linear(width, width)
  layers, column- and row-wise in turn (`parallelize_module`) over a tp mesh of one rank
  (each rank its own, all ranks at once: the dispatch and hooks without the collectives,
  which the model charges apart at DTensor's own fits, `weft.planner.collective_fit`; on
  a one-rank mesh DTensor issues no functional collective at all, 2026-12-03), train one
  forward + backward; minus the same plain Linear layers, per weight and bias; the
  median over 3x the rounds of each round's own difference (at 9 rounds, a difference of
  medians moved 502-628 us per tensor in four calibrations in a row, 2026-12-03; round by
  round over 27, 556-601). (Over all ranks, less the all-reduces timed alone,
  as before 2026-12-02, it was a small difference of two large, noisy figures: 0-1.6 ms
  per tensor in calibrations minutes apart, and it counted the all-reduces' extra cost
  inside a step, which `weft.planner.collective_fit` measures now.)
* ``pipeline_microbatch_s``: what one more micro-batch costs a pipelined plan's step
  when its stages compute nothing: a two-stage 1F1B plan (`weft.parallelize`, torch's
  schedule, weft's DataParallel over the other ranks; an odd world runs one stage per
  rank) whose stages multiply ``pipe_width`` floats per sample by a scalar, stepped with
  as many micro-batches of one sample as it has stages and with `pipe_extra` more, the
  difference per extra micro-batch. Each stage then runs a forward and a backward per
  micro-batch and sends one message each way, so `apply` charges the plan cost model, per forward or backward
  action (``Costs.pipeline_action_s``), half of it less the charge of one such send
  (`weft.planner.comm.p2p_cpu`): the schedule's bookkeeping, posting its sends and
  receives and waking up on them, which the compute and the sends do not cover.

Each timing is the median over `repeats` interleaved rounds of the slowest rank, ranks
synchronised by a barrier before each run; ranks run one thread each, as `weft.launch`
starts them. A figure that comes out negative on a noisy machine is clipped to 0.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.distributed as dist
from torch import nn

from weft.planner.dp_overlap import dp_overlap_rounds
from weft.planner.measure import slowest_seconds


@dataclass(frozen=True)
class RuntimeCosts:
    overlap: float
    fsdp_overlap: float
    fsdp_call_s: float
    optimizer_tensor_s: float
    optimizer_bw: float
    dtensor_tensor_s: float
    world: int
    tp_tensor_s: float = 0.0
    pipeline_microbatch_s: float = 0.0
    pipeline_bytes: float = 0.0  # the activation each micro-batch sends in that measurement
    seconds: dict = field(default_factory=dict)  # the timings the figures come from

    def apply(self, costs):
        """`costs` (a `weft.planner.plan_cost.Costs`) with these figures; the pipeline's
        per action from `pipeline_microbatch_s` less what `costs` charge for its sends."""
        return replace(costs, overlap=self.overlap, fsdp_overlap=self.fsdp_overlap,
                       pipeline_action_s=self.action_s(costs), fsdp_call_s=self.fsdp_call_s,
                       optimizer_tensor_s=self.optimizer_tensor_s,
                       dtensor_tensor_s=self.dtensor_tensor_s, optimizer_bw=self.optimizer_bw,
                       tp_tensor_s=self.tp_tensor_s)

    def action_s(self, costs) -> float:
        """Seconds per pipeline action beyond the sends `costs` charge (see the module doc):
        each stage's micro-batch is two actions and two sends of `pipeline_bytes`."""
        from weft.planner.comm import p2p_cpu

        send = p2p_cpu(costs.collective, self.pipeline_bytes) + (costs.latency_s or 0.0)
        return max(self.pipeline_microbatch_s / 2 - send, 0.0)

    def summary(self) -> str:
        return (f"overlap {self.overlap:.2f} (fully_shard's {self.fsdp_overlap:.2f}), "
                f"fully_shard {self.fsdp_call_s * 1e3:.2f} ms per call, optimizer {self.optimizer_tensor_s * 1e6:.0f} us per tensor + "
                f"{self.optimizer_bw / 1e9:.2f} GB/s, DTensor {self.dtensor_tensor_s * 1e6:.0f} "
                f"us per tensor, tensor parallel {self.tp_tensor_s * 1e6:.0f} us per tensor "
                f"and micro-batch, pipeline {self.pipeline_microbatch_s * 1e3:.2f} ms per "
                f"micro-batch (on {self.world} local gloo ranks)")

    def to_dict(self) -> dict:
        return asdict(self)


def _round_times(fns: dict, repeats: int) -> dict[str, list[float]]:
    """{name: seconds of the slowest rank per round} over `repeats` interleaved rounds
    (each round runs every function once, so all see the same background load), after
    one warm-up round."""
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t = slowest_seconds(fn)
            if r:
                ts[k].append(t)
    return ts


def _rounds(fns: dict, repeats: int) -> dict[str, float]:
    """{name: median over `_round_times`' rounds}."""
    return {k: statistics.median(v) for k, v in _round_times(fns, repeats).items()}


def _rounds_and(fns: dict, repeats: int, **per_round) -> dict[str, float]:
    """`_rounds`, and for each ``name=f`` of `per_round` the median over the rounds of
    ``f(that round's timings)``: a figure combining several timings taken from one round,
    so that a slow round slows all of them and cancels (a difference of medians taken over
    rounds apart moved fully_shard's cost per call 0.0-3.5 ms between calibrations minutes
    apart, 2026-12-03)."""
    ts = _round_times(fns, repeats)
    rounds = [dict(zip(ts, row)) for row in zip(*ts.values())]
    return {**{k: statistics.median(v) for k, v in ts.items()},
            **{name: statistics.median(f(r) for r in rounds) for name, f in per_round.items()}}


def _fsdp_rounds(fns: dict, repeats: int, units: int) -> dict[str, float]:
    """`_rounds_and` with "fsdp_call_rounds": fully_shard's own cost per call, its step
    less the plain step and the raw collectives, over the 3 calls per unit."""
    return _rounds_and(fns, repeats, fsdp_call_rounds=lambda r: (
        r["fsdp_step"] - r["plain_step"] - units * (2 * r["unit_gather"] + r["unit_scatter"])
    ) / (3 * units))


def _tp_rounds(fns: dict, repeats: int) -> dict[str, float]:
    """`_rounds_and` with "tp_rounds": the tensor-parallel step less its plain layers."""
    return _rounds_and(fns, repeats, tp_rounds=lambda r: r["tp_step"] - r["tp_local"])


def _overlap_rounds(hide: dict, repeats: int) -> dict[str, float]:
    """`_rounds_and` with "overlap_rounds": (compute + gather - both) / min(compute,
    gather)."""
    return _rounds_and(hide, repeats, overlap_rounds=lambda r: (
        r["compute"] + r["gather"] - r["both"]) / max(min(r["compute"], r["gather"]), 1e-9))


def _adam(params):
    """Adam's step over `params`, with gradients of a training step's order of magnitude:
    with all-zero gradients the same steps took 1.3-2x as long (4 ranks sharing 2 cores,
    2026-12-02: 828,672 elements in 57 tensors, 7.4-8.3 ms against 4.0-4.9)."""
    opt = torch.optim.Adam(params)
    g = torch.Generator().manual_seed(0)
    for p in params:  # fully_shard's DTensors get a constant gradient of their own layout
        p.grad = torch.full_like(p, 1e-3) if hasattr(p, "_local_tensor") else \
            torch.randn(p.shape, generator=g) * 1e-3
    return opt.step


def runtime_costs_rank(repeats: int, units: int, width: int, tensors: int,
                       pipe_width: int = 16384, pipe_extra: int = 12,
                       optimizer_numel: int | None = None) -> dict:
    """In every rank (see the module doc): the timings, seconds."""
    from torch.distributed.device_mesh import init_device_mesh

    from weft.parallel.fsdp import fsdp2
    _, fully_shard = fsdp2()

    n = dist.get_world_size()
    torch.manual_seed(0)
    a, b = torch.randn(96, 96), torch.randn(96, 96)

    def compute():
        x = a
        for _ in range(60):
            x = torch.tanh(x @ b)
    full = torch.ones(max(n, (2 << 20) // 4 // n * n))
    shard = torch.ones(full.numel() // n)

    def both():
        work = dist.all_gather_single(full, shard, async_op=True)
        compute()
        work.wait()
    unit = torch.ones(width * width // n * n)
    part = torch.ones(unit.numel() // n)
    # the overlap is a difference of three timings: rounds of their own, 3x as many (at 9
    # rounds among the other figures it came out 0.00-0.14 in most calibrations of
    # 2026-12-02 evening, and 0.33 and 0.78 in two)
    hide = {"compute": compute, "gather": lambda: dist.all_gather_single(full, shard),
            "both": both}
    fsdp = {"unit_gather": lambda: dist.all_gather_single(unit, part),
            "unit_scatter": lambda: dist.reduce_scatter_single(part, unit)}
    # fully_shard: `units` Linear(width, width) units, and the same model unsharded
    x = torch.randn(2, width)
    mesh = init_device_mesh("cpu", (n,))
    for key in ("plain", "fsdp"):
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(units)])
        if key == "fsdp":
            for m in model:
                fully_shard(m, mesh=mesh)
            fully_shard(model, mesh=mesh)
        fsdp[f"{key}_step"] = lambda model=model: model(x).sum().backward()
    issued = _how_fsdp_calls(lambda: fsdp["fsdp_step"]())
    # Adam over plain tensors: many small and few small (the same bytes), few large; and
    # over the many small as fully_shard's DTensors (one unit). Timed in rounds of their
    # own (a training step's optimizer follows its own backward, not other work)
    small = tensors * 1024
    adam = {}
    for key, count, numel in (("many_small", tensors, small), ("few_small", 2, small),
                              ("few_large", 2, _large(optimizer_numel, small))):
        adam[f"adam_{key}"] = _adam([nn.Parameter(torch.zeros(numel // count))
                                     for _ in range(count)])
    many = nn.Sequential(*[nn.Linear(32, 32, bias=False) for _ in range(tensors)])
    fully_shard(many, mesh=mesh)
    adam["adam_dtensors"] = _adam(list(many.parameters()))
    # Adam's rounds are short (a few ms each), and the rate per byte is a difference of
    # two of them: 3x the rounds (at 9, the rate moved 0.38-2.0 GB/s between calibrations)
    return {**_tp_rounds(_tp_steps(units, width, x), 3 * repeats),
            **_fsdp_rounds(fsdp, 3 * repeats, units),
            **_overlap_rounds(hide, 3 * repeats),
            **dp_overlap_rounds(optimizer_numel, 3 * repeats), **_rounds(adam, 3 * repeats),
            **_pipeline_steps(pipe_width, pipe_extra, repeats), **issued}


class _Scale(nn.Module):
    """x * w, one scalar weight: a pipeline stage that computes (almost) nothing."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.w


def _pipeline_steps(width: int, extra: int, repeats: int) -> dict:
    """{"pipe_lo": s, "pipe_hi": s}: the step of a pipelined plan of `_Scale` stages (see
    the module doc) with the fewest micro-batches its schedule takes and with `extra` more,
    one sample of `width` floats each; timed in rounds of their own, after the other
    figures, with the plans' process groups destroyed afterwards."""
    from weft.parallel.apply import parallelize
    from weft.parallel.groups import own_groups

    n = dist.get_world_size()
    pp = 2 if n % 2 == 0 else n
    lo = pp
    with own_groups():
        fns = {}
        for key, m in (("pipe_lo", lo), ("pipe_hi", lo + extra)):
            plan = {"format": "weft.plan/1", "name": f"pipeline x{m}",
                    "mesh": {"pp": pp, "dp_replicate": n // pp},
                    "pipeline": {"split": [str(k) for k in range(1, pp)], "schedule": "1f1b",
                                 "microbatches": m}}
            pm = parallelize(nn.Sequential(*[_Scale() for _ in range(pp)]), plan)
            x = torch.ones(m, width)
            fns[key] = functools.partial(pm.step, x, x, lambda out, _: out.sum())
        out = _rounds(fns, repeats)
        del fns, pm
    return out


def _tp_steps(units: int, width: int, x) -> dict:
    """Forward + backward of `units` Linear layers, column- and row-wise parallel in turn
    over a tp mesh of this rank alone (`tp_step`), and of the same plain layers
    (`tp_local`)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    alone = init_device_mesh("cpu", (dist.get_world_size(), 1),
                             mesh_dim_names=("ranks", "tp"))["tp"]
    units -= units % 2
    torch.manual_seed(0)
    tp = nn.Sequential(*[nn.Linear(width, width) for _ in range(units)])
    parallelize_module(tp, alone, {str(i): ColwiseParallel() if i % 2 == 0 else
                                   RowwiseParallel() for i in range(units)})
    torch.manual_seed(0)
    local = nn.Sequential(*[nn.Linear(width, width) for _ in range(units)])
    return {"tp_step": lambda: tp(x).sum().backward(),
            "tp_local": lambda: local(x).sum().backward()}


def _how_fsdp_calls(step) -> dict:
    """Run `step` once with fully_shard's collectives watched: how many it issues, and how
    many of them asynchronously (async_op=True: the caller may compute meanwhile)."""
    names = ("all_gather_single", "reduce_scatter_single")
    real = {k: getattr(dist, k) for k in names}
    seen = {"fsdp_calls": 0.0, "fsdp_async_calls": 0.0}

    def watched(*a, _name, **kw):
        seen["fsdp_calls"] += 1
        seen["fsdp_async_calls"] += bool(kw.get("async_op", False))
        return real[_name](*a, **kw)
    try:
        for k in names:
            setattr(dist, k, functools.partial(watched, _name=k))
        step()
    finally:
        for k in names:
            setattr(dist, k, real[k])
    return seen


def _large(optimizer_numel: int | None, small: int) -> int:
    """The elements of Adam's large case: the model's, at least 8 times the small case
    (so the difference per byte is not lost in the noise), else 32 times it."""
    return max(int(optimizer_numel), 8 * small) if optimizer_numel else 32 * small


def measure_runtime_costs(world: int = 2, repeats: int = 5, units: int = 8, width: int = 128,
                          tensors: int = 64, timeout: float = 300.0, pipe_width: int = 16384,
                          pipe_extra: int = 12,
                          optimizer_numel: int | None = None) -> RuntimeCosts:
    """The figures of the module doc on `world` local gloo ranks (at least 2);
    `optimizer_numel`: the parameters of the model planned (Adam's rate per byte is
    measured at that size)."""
    from weft.errors import PlanError
    from weft.launch import launch

    if world < 2:
        raise PlanError(f"runtime costs are measured on at least 2 ranks, got {world}")
    if pipe_width < 1 or pipe_extra < 1:
        raise PlanError(f"pipe_width and pipe_extra must be >= 1, got {pipe_width}, {pipe_extra}")
    if optimizer_numel is not None and optimizer_numel < 1:
        raise PlanError(f"optimizer_numel must be >= 1, got {optimizer_numel}")
    s = launch(runtime_costs_rank, world, args=(repeats, units, width, tensors, pipe_width,
                                                pipe_extra, optimizer_numel),
               timeout=timeout)[0]
    overlap = s["dp_overlap"]            # DataParallel's sync under its backward
    hidden = min(max(s["overlap_rounds"], 0.0), 1.0)  # an asynchronous all-gather's
    fsdp_call = s["fsdp_call_rounds"]
    per_tensor = max(0.0, (s["adam_many_small"] - s["adam_few_small"]) / (tensors - 2))
    small = 4.0 * tensors * 1024
    bw = (4.0 * _large(optimizer_numel, tensors * 1024) - small) / \
        max(s["adam_few_large"] - s["adam_few_small"], 1e-9)
    dtensor = (s["adam_dtensors"] - small / world / bw) / tensors
    asynchronous = s["fsdp_async_calls"] / max(s["fsdp_calls"], 1.0)
    pairs = (units - units % 2) // 2
    tp = s["tp_rounds"] / (4 * pairs)
    per_mb = (s["pipe_hi"] - s["pipe_lo"]) / pipe_extra
    return RuntimeCosts(overlap, hidden * asynchronous, max(fsdp_call, 0.0), per_tensor, bw,
                        max(dtensor, 0.0), world, seconds=s, tp_tensor_s=max(tp, 0.0),
                        pipeline_microbatch_s=max(per_mb, 0.0), pipeline_bytes=4.0 * pipe_width)
