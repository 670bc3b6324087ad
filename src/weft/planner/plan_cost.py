"""Predicted step time and memory of a whole plan on a topology, term by term.

    model = PlanModel(workload, topology, Costs(compute_scale=1.2))
    est = model.estimate(Shape.of(plan, workload, global_batch=64, world=8))
    est.step_s, est.terms, est.memory.terms        # what `weft plan explain` prints

Per pipeline stage (layers [i, j), its ranks those with that pp coordinate), per
micro-batch of b samples at tensor-parallel degree t:

* compute: the workload's forward and backward times (`Layer.compute_s`), times
  ``compute_scale``, plus the forward again for checkpointed layers (recompute);
* tensor parallelism: each layer's collectives (`Layer.collectives`, b x bytes per
  sample) over the stage's tp groups, all at once (`weft.planner.comm`; DTensor's own
  fits where measured, `Comm.dtensor`), not overlapped;
* pipeline: activations (b x the stage's last layer's output bytes) to the next stage
  and gradients back, over every pp pair at once, and the schedule's own cost of each
  forward and backward action (``pipeline_action_s``: its bookkeeping, posting the sends
  and receives and waking up on them; `weft.planner.runtime_costs`); with M micro-batches
  a flush schedule takes ``sum_s w_s + (M - 1) max_s w_s`` (w_s: forward + backward +
  sends + two actions of a micro-batch on stage s; GPipe and 1F1B alike), interleaved
  (v chunks per rank) ``sum_r w_r / v + (M - 1) max_r w_r`` over ranks; the bubble is
  what exceeds M x the mean stage's work;
* data parallelism (`weft.planner.dp_cost`), after the last micro-batch's backward:
  weft/DDP all-reduce the stage's gradients over dp_replicate in buckets of ``bucket_mb``,
  overlapped with that backward except the last bucket; fully_shard's all-gathers and
  reduce-scatters per unit, as many as the runtime issues (HSDP: then the shard's
  all-reduce over dp_replicate), overlapped with the compute except the first and the
  last; overlap only under the fraction ``overlap`` of the compute;
* the optimizer step (parameters updated at ``optimizer_bw`` bytes/s, plus a cost per
  parameter tensor, a DTensor's higher) and a fixed ``step_overhead_s``.

The step is the pipeline's time plus the slowest stage's exposed synchronisation and
optimizer step. The stages' split comes from the PipeDream partitioner
(`weft.planner.cost.CostModel`, its dynamic program, one rank per stage) on these
per-micro-batch costs, unless the plan fixes it. Memory: `weft.planner.memory`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from weft.collectives.costmodel import CostParams
from weft.errors import PlanError
from weft.planner.comm import DEFAULT_PARAMS, Comm
from weft.planner.cost import CostModel
from weft.planner.dp_cost import (
    optimizer_time,
    replicated_algorithms,
    replicated_sync,
    sharded_sync,
)
from weft.planner.memory import Memory, plan_memory
from weft.planner.mesh_groups import LazyDims, mesh_groups
from weft.planner.network import Network
from weft.planner.profile import LayerProfile, ModelProfile
from weft.planner.shape import Shape
from weft.planner.workload import Workload
from weft.topology.model import Topology


@dataclass(frozen=True)
class Costs:
    """What the runtime and the machine cost beyond the workload and the topology."""

    compute_scale: float = 1.0  # measured slowdown with every rank computing at once
    collective: CostParams = DEFAULT_PARAMS  # per-message / per-byte CPU of collectives
    optimizer_bw: float = 0.0  # bytes of parameters the optimizer updates per second (0: free)
    step_overhead_s: float = 0.0
    latency_s: float | None = None  # point-to-point message latency (None: the links')
    overlap: float = 1.0  # fraction of the compute an asynchronous collective can hide under
    fsdp_overlap: float = 1.0  # the same for fully_shard's (0 where it blocks: gloo)
    fsdp_call_s: float = 0.0  # fully_shard's own cost per all-gather / reduce-scatter call
    optimizer_tensor_s: float = 0.0  # optimizer step per plain parameter tensor
    dtensor_tensor_s: float = 0.0  # optimizer step per DTensor parameter (fully_shard, tp)
    tp_tensor_s: float = 0.0  # forward + backward per micro-batch per DTensor parameter of a
    #                           tensor-parallel module (DTensor dispatch, redistribute hooks)
    pipeline_action_s: float = 0.0  # the pipeline schedule's own cost per forward or
    #                                 backward action of a micro-batch on a stage (pp > 1)
    collective_fits: tuple = ()  # (kind, group size, latency s, s per byte) measured on the
    #                              ranks (weft.planner.collective_fit); replace the ring model


@dataclass
class Estimate:
    shape: Shape
    step_s: float
    terms: dict[str, float]
    memory: Memory
    memory_stage: int
    stages: list[dict]
    placement: list[str]
    fits: bool = True
    notes: list[str] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)  # data-parallel collectives per pp rank

    @property
    def peak_bytes(self) -> float:
        return self.memory.peak

    @property
    def bubble(self) -> float:
        return self.terms.get("pipeline bubble", 0.0) / self.step_s if self.step_s else 0.0

    @property
    def comm_share(self) -> float:
        c = sum(self.terms.get(k, 0.0) for k in ("tensor-parallel collectives",
                                                 "pipeline sends", "data-parallel exposed"))
        return c / self.step_s if self.step_s else 0.0


class _OneRankStages(CostModel):
    """PipeDream's DP (`CostModel`: its stage and boundary costs, walk and evaluation)
    restricted to one rank per stage, since the mesh's dp dims do the replication: the
    table's loop over a stage's replica count is the single case r = 1."""

    def stage_time(self, i, j, a: int, r: int):
        if r > 1:
            return np.full(np.broadcast(np.asarray(i), np.asarray(j)).shape, np.inf)
        return super().stage_time(i, j, a, r)

    def table(self, end: int | None = None):
        L, W = self.L if end is None else end, self.W
        A = np.full((L + 1, W + 1), np.inf)
        choice = np.zeros((L + 1, W + 1, 2), dtype=int)
        A[L, 0] = 0.0
        I = np.arange(L)[:, None]
        J = np.arange(L + 1)[None, :]
        later = J > I
        for m in range(1, W + 1):
            a = W - m
            if m == 1:  # the last stage takes every remaining layer
                val = np.full((L, L + 1), np.inf)
                val[:, L] = self.stage_time(I[:, 0], L, a, 1)
            else:
                Jc = np.minimum(J, L - 1)[:, :L]
                val = np.maximum(np.maximum(self.stage_time(I, J[:, :L], a, 1),
                                            self.boundary_time(np.maximum(Jc, 1), a + 1)),
                                 A[None, :L, m - 1])
                val = np.concatenate([val, np.full((L, 1), np.inf)], axis=1)
            val = np.where(later, val, np.inf)
            k = val.argmin(axis=1)
            A[:L, m] = val[np.arange(L), k]
            choice[:L, m, 0] = k
            choice[:L, m, 1] = 1
        return A, choice


class PlanModel:
    def __init__(self, workload: Workload, topology: Topology | Network, costs: Costs = Costs(),
                 devices: list[str] | None = None):
        """`devices`: the launcher's order of devices (rank order); default the compute
        devices grouped by host."""
        self.workload = workload
        self.net = topology if isinstance(topology, Network) else Network(topology)
        self.devices = list(devices) if devices is not None else None
        self.costs = costs
        self._comm: dict[str, Comm] = {}
        self._parts: dict = {}
        self._mesh: dict = {}
        self._groups: dict = {}
        self._hops: dict = {}
        ls = workload.layers
        self._arrays = {
            "fixed": np.array([l.fixed_s for l in ls]),
            "f_rep": np.array([l.forward.rep for l in ls]),
            "f_split": np.array([l.forward.split for l in ls]),
            "b_rep": np.array([l.backward.rep for l in ls]),
            "b_split": np.array([l.backward.split for l in ls]),
            "p_rep": np.array([l.params.rep for l in ls]),
            "p_split": np.array([l.params.split for l in ls]),
            "tp_tensors": np.array([float(l.tp_tensors) for l in ls]),
            "colls": [tuple((c.kind, c.phase, c.nbytes) for c in l.collectives) for l in ls]}

    def comm(self, communicator: str) -> Comm:
        """The `Comm` of "torch" (torch.distributed's collectives) or "weft" (the
        autotuner's choice on the topology)."""
        c = communicator
        if c not in self._comm:
            self._comm[c] = Comm(self.net, self.costs.collective, c,
                                 fits=self.costs.collective_fits)
        return self._comm[c]

    def rank_order(self, world: int) -> list[str]:
        devs = self.devices if self.devices is not None else self.net.compute_devices
        if world > len(devs):
            raise PlanError(f"the plan needs {world} devices; topology "
                            f"{self.net.topology.name!r} has {len(devs)}")
        return devs[:world]

    # -- per micro-batch costs of one stage --------------------------------------------
    def _layer_costs(self, shape: Shape, comm: Comm, tp_groups) -> tuple[np.ndarray, ...]:
        t, b, k = shape.tp, shape.micro_batch, self.costs.compute_scale
        a = self._arrays
        f = (a["fixed"] / 2 + b * (a["f_rep"] + a["f_split"] / t)) * k
        bw = (a["fixed"] / 2 + b * (a["b_rep"] + a["b_split"] / t)) * k
        ck = np.zeros(len(f), dtype=bool)
        ck[list(shape.checkpoint)] = True
        if t > 1 and self.costs.tp_tensor_s:  # DTensor's own cost, half in each direction
            f = f + a["tp_tensors"] * self.costs.tp_tensor_s / 2
            bw = bw + a["tp_tensors"] * self.costs.tp_tensor_s / 2
        bw = bw + np.where(ck, f, 0.0)
        cf, cb = np.zeros(len(f)), np.zeros(len(f))
        if t > 1:
            memo: dict = {}
            for i, colls in enumerate(a["colls"]):
                for kind, phase, nbytes in colls:
                    kind = comm.dtensor(kind, tp_groups)
                    key = (kind, nbytes * b)
                    tc = memo.get(key)
                    if tc is None:
                        tc = memo[key] = comm.collective(kind, tp_groups, nbytes * b)
                    if phase == "forward":
                        cf[i] += tc
                    else:
                        cb[i] += tc
            cb = cb + np.where(ck, cf, 0.0)  # the recomputed forward repeats its collectives
        return f + cf, bw + cb, cf + cb

    def partition(self, shape: Shape, fwd: np.ndarray, bwd: np.ndarray,
                  p2p_bw: list[float]) -> tuple[tuple[int, int], ...]:
        """The stages' layer ranges: PipeDream's DP on per-micro-batch costs."""
        S, L = shape.stages, len(self.workload)
        if S == 1:
            return ((0, L),)
        if S > L:
            raise PlanError(f"{S} pipeline stages but the workload has {L} layers")
        wl = self.workload
        linear = not self._arrays["fixed"].any()
        scale = shape.micro_batch if linear else 1.0  # per-sample costs give the same split
        key = (S, shape.tp, shape.checkpoint, None if linear else (shape.micro_batch,),
               tuple(round(x, 3) for x in p2p_bw), tuple(np.round(fwd / scale, 15)),
               tuple(np.round(bwd / scale, 15)))
        got = self._parts.get(key)
        if got is not None:
            return got
        b = 1.0 if linear else shape.micro_batch
        layers = [LayerProfile(l.name, fwd[i] / scale, bwd[i] / scale, l.out_bytes * b, 0.0)
                  for i, l in enumerate(wl.layers)]
        prof = ModelProfile(layers, 1)
        bw = np.full((S, S), np.inf)
        for s in range(S - 1):
            bw[s, s + 1] = bw[s + 1, s] = p2p_bw[s % len(p2p_bw)] if p2p_bw else np.inf
        cm = _OneRankStages(prof, bw, np.full(S, np.inf), microbatches=1, stash=False)
        _, bounds, _ = cm.solve()
        got = tuple(bounds)
        self._parts[key] = got
        return got

    def _params_at(self, t: int, i: int, j: int) -> float:
        a = self._arrays
        return float(a["p_rep"][i:j].sum() + a["p_split"][i:j].sum() / t)

    def _dims(self, comm: Comm, gkey, groups) -> dict:
        """{dim: per pp coordinate, its `Groups`} (lazily, cached with the mesh groups)."""
        key = (comm.communicator, gkey)
        got = self._groups.get(key)
        if got is None:
            got = self._groups[key] = LazyDims(comm, groups)
        return got

    # -- the whole plan ---------------------------------------------------------------------
    def estimate(self, shape: Shape, placement: list[str] | None = None,
                 memory_limit: float | None = None) -> Estimate:
        wl = self.workload
        placement = list(placement) if placement is not None else self.rank_order(shape.world)
        if len(placement) != shape.world:
            raise PlanError(f"placement names {len(placement)} devices for {shape.world} ranks")
        # DTensor, fully_shard and the pipeline's sends run torch.distributed's collectives;
        # weft's communicator serves only weft's DataParallel (the plan format's rule)
        comm = self.comm("torch")
        gkey = (shape.pp, shape.dp_replicate, shape.dp_shard, shape.tp, tuple(placement))
        groups = self._mesh.get(gkey)
        if groups is None:
            groups = self._mesh[gkey] = mesh_groups(shape, placement)
        G = self._dims(comm, gkey, groups)
        fwd, bwd, tpc = self._layer_costs(shape, comm, G["tp"][0])
        S, b, M = shape.stages, shape.micro_batch, shape.microbatches
        hops = self._hops.get((gkey, S))
        if hops is None:  # every pipeline's stage s -> s+1 (chunks wrap round when interleaved)
            pipes = groups["pp"][0]
            hops = self._hops[gkey, S] = [
                self.net.per_byte([(p[s % shape.pp], p[(s + 1) % shape.pp]) for p in pipes
                                   if p[s % shape.pp] != p[(s + 1) % shape.pp]])
                for s in range(S - 1)]
        probe = 1 << 20
        p2p_bw = [probe / max(comm.p2p_time(h, probe, self.costs.latency_s), 1e-12)
                  for h in hops]
        bounds = shape.bounds or self.partition(shape, fwd, bwd, p2p_bw)
        if len(bounds) != S:
            raise PlanError(f"{len(bounds)} stage ranges for {S} pipeline stages")
        shape = shape.with_bounds(bounds)
        stages, work = [], []
        act = 2 * self.costs.pipeline_action_s if S > 1 else 0.0  # forward + backward
        for s, (i, j) in enumerate(bounds):
            f, bw_, tp = float(fwd[i:j].sum()), float(bwd[i:j].sum()), float(tpc[i:j].sum())
            send = comm.p2p_time(hops[s], b * wl.layers[j - 1].out_bytes,
                                 self.costs.latency_s) if s < S - 1 else 0.0
            stages.append({"stage": s, "layers": (i, j), "forward_s": f, "backward_s": bw_,
                           "tp_s": tp, "send_s": send, "actions_s": act})
            work.append(f + bw_ + 2 * send + act)
        per_rank = [sum(work[c] for c in range(S) if c % shape.pp == r) for r in range(shape.pp)]
        v = shape.stages_per_rank
        pipe_t = sum(per_rank) / v + (M - 1) * max(per_rank)
        busy = M * sum(per_rank) / shape.pp
        sync, opt, sync_total, calls = [], [], [], []
        for r in range(shape.pp):
            total, exposed, n = self._sync(shape, groups, gkey, r, stages)
            sync.append(exposed)
            sync_total.append(total)
            calls.append(dict(n))
            opt.append(optimizer_time(self, shape, [k for c in range(S) if c % shape.pp == r
                                                    for k in range(*bounds[c])]))
        tied = self._tied_sync(shape, comm, groups, bounds)
        tail = max(x + y + z for x, y, z in zip(sync, opt, tied))
        step = pipe_t + tail + self.costs.step_overhead_s
        rb = max(range(shape.pp), key=lambda r: per_rank[r])
        mine = [st for st in stages if st["stage"] % shape.pp == rb]
        terms = {"compute": M * sum(st["forward_s"] + st["backward_s"] - st["tp_s"] for st in mine),
                 "tensor-parallel collectives": M * sum(st["tp_s"] for st in mine),
                 "pipeline sends": M * sum(2 * st["send_s"] for st in mine),
                 "pipeline actions": M * sum(st["actions_s"] for st in mine),
                 "pipeline bubble": max(pipe_t - busy, 0.0),
                 "data-parallel total": max(sync_total),
                 "data-parallel exposed": max(sync),
                 "optimizer": max(opt), "tied-weight sync": max(tied),
                 "overhead": self.costs.step_overhead_s}
        peak, mstage, mem = plan_memory(shape, wl)
        fits = memory_limit is None or peak <= memory_limit
        return Estimate(shape, step, terms, mem, mstage, stages, placement, fits, calls=calls)

    def _tied_sync(self, shape: Shape, comm: Comm, groups, bounds) -> list[float]:
        """Per pp rank, seconds to sum the gradients of weights tied across stages on
        different ranks (`workload.meta["tied"]`: (first layer, last layer, bytes); the
        ranks holding a copy all-reduce it after the schedule, weft.parallel.tied)."""
        out = [0.0] * shape.pp
        for first, last, nbytes in self.workload.meta.get("tied", ()):
            at = [next(s for s, (i, j) in enumerate(bounds) if i <= k < j) % shape.pp
                  for k in (first, last)]
            if shape.pp < 2 or at[0] == at[1]:
                continue
            pairs = comm.groups([[p[at[0]], p[at[1]]] for p in groups["pp"][0]])
            t = comm.collective("allreduce", pairs, nbytes / shape.tp)
            for r in at:
                out[r] += t
        return out

    def dp_algorithms(self, est: Estimate) -> list[str]:
        """The algorithms of `est`'s data-parallel all-reduce per pipeline rank (replicated
        plans; [] otherwise), as the estimate charged them: for `weft plan explain`."""
        shape = est.shape
        if shape.dp_replicate < 2 or shape.sharded:
            return []
        gkey = (shape.pp, shape.dp_replicate, shape.dp_shard, shape.tp, tuple(est.placement))
        groups = self._mesh.get(gkey) or mesh_groups(shape, list(est.placement))
        comm = self.dp_comm(shape)
        G = self._dims(comm, gkey, groups)
        return [replicated_algorithms(self, shape, comm, G, r, est.stages)
                for r in range(shape.pp)]

    def _sync(self, shape: Shape, groups, gkey, r: int, stages):
        """(total, exposed seconds, calls) of data parallelism on pipeline rank r per step
        (`weft.planner.dp_cost`), over `dp_comm`'s collectives."""
        mine = [st for st in stages if st["stage"] % shape.pp == r]
        if shape.dp < 2 or not any(self._params_at(shape.tp, *st["layers"]) for st in mine):
            return 0.0, 0.0, Counter()
        comm = self.dp_comm(shape)
        sync = sharded_sync if shape.sharded else replicated_sync
        return sync(self, shape, comm, self._dims(comm, gkey, groups), r, stages)

    def dp_comm(self, shape: Shape) -> Comm:
        """The `Comm` of `shape`'s data-parallel collectives (weft's communicator, if the
        plan asks for it, serves weft's DataParallel only; fully_shard's are torch's)."""
        return self.comm(shape.communicator if shape.flavour == "weft" else "torch")
