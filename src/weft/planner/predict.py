"""Predicted throughput of a plan under a schedule: simulate its action lists.

The costs beyond the profile and the topology come from one `PlannerSettings`
(``settings.cpu_copy_bw``, ...; `weft.planner.settings`). Each F/B takes the
stage's profiled forward/backward time (profile rescaled to the plan's
micro-batch) times ``compute_scale`` (the measured slowdown of compute when
every rank computes at once, `weft.planner.contention`; 1 by default), each
transfer ``bytes / bandwidth + latency`` on the path between the two ranks'
devices (``latency_s`` when set, else the link's); with ``cpu_copy_bw``
(bytes/s; loopback gloo, where the sender's and the receiver's CPUs copy every
message) each send and each receive also occupies its rank for
``bytes / cpu_copy_bw``, on top of the link time; with ``action_overhead_s``
(the runtime's own cost per action, measured by `weft.planner.overhead.calibrate`)
every action of every rank (F, B, each send and receive, PipeDream's updates)
takes that much longer, and ``step_overhead_s`` is added once per step
(optimizer step, flush); a flush schedule then all-reduces replicated stages'
gradients (ring cost, plus with ``cpu_copy_bw`` the copies of the bytes each
replica sends and receives; ``allreduce_bw`` instead when set) before the next
step. PipeDream is simulated over many micro-batches and reported at its steady
rate. A parameter shared by two stages (`shared_across`: a tied embedding) has its gradient
all-reduced over every rank holding it after that (ring cost over those ranks).
"""

from __future__ import annotations

from weft.errors import PlanError
from weft.parallel.pipeline.schedule import build_schedule, simulate_pipeline
from weft.parallel.pipeline.stages import PipelinePlan
from weft.planner.contention import settle_scales
from weft.planner.cost import workers_of
from weft.planner.profile import ModelProfile
from weft.planner.settings import UNCALIBRATED, PlannerSettings
from weft.topology.model import Topology


def _latency(topo: Topology, a: str, b: str) -> float:
    link = topo.link(a, b)
    return link.latency if link else 1e-6


def shared_across(plan: PipelinePlan, profile: ModelProfile,
                  chunks_per_stage: int = 1) -> list[dict]:
    """The profile's shared parameters that layers of two or more of the plan's stages use:
    ``{"names", "layers", "stages", "ranks", "bytes"}`` each (their gradients are summed over
    those ranks every step, `weft.parallel.pipeline.shared`)."""
    bounds = plan.chunk_bounds(chunks_per_stage)
    S, out = plan.num_stages, []
    for e in profile.shared:
        stages = sorted({c % S for c, (a, b) in enumerate(bounds)
                         for i in e["layers"] if a <= i < b})
        if len(stages) > 1:
            ranks = sorted(r for s in stages for r in plan.stages[s].ranks)
            out.append({"names": list(e["names"]), "layers": list(e["layers"]),
                        "stages": stages, "ranks": ranks, "bytes": float(e["bytes"])})
    return out


def _ring_time(ranks: list[int], nbytes: float, devs, topology: Topology,
               settings: PlannerSettings) -> float:
    """A ring all-reduce of `nbytes` over `ranks` (as the replicas' gradient sync)."""
    r = len(ranks)
    if r < 2:
        return 0.0
    ring = 2 * (r - 1) / r * nbytes  # bytes each member sends and receives
    if settings.allreduce_bw:
        return ring / settings.allreduce_bw
    bw = min(topology.path_bandwidth(devs[a], devs[b])
             for a, b in zip(ranks, ranks[1:] + ranks[:1]))
    return ring / bw + (2 * ring / settings.cpu_copy_bw if settings.cpu_copy_bw else 0.0)


def predict(plan: PipelinePlan, profile: ModelProfile, topology: Topology,
            schedule: str = "1f1b", chunks_per_stage: int = 1,
            settings: PlannerSettings = UNCALIBRATED, contention: str = "all") -> dict:
    """{'step_s', 'samples_per_s', 'bubble'} predicted for `plan` run with `schedule`.

    settings: the measured costs to charge (all six fields; see the module doc and
    `weft.planner.settings`): ``latency_s`` replaces the topology's link latency,
    ``allreduce_bw`` the link and copy terms of the gradient all-reduce, and
    ``compute_scale`` is the measured slowdown k of compute with every rank computing at
    once (`weft.planner.contention`). contention='all' multiplies
    every profiled forward and backward time (and the per-stage autograd call) by k;
    'overlap' charges rank r ``1 + (k - 1) * u_r``, with u_r the fraction of its F/B time
    during which the other ranks run F/B too (mean over them), found by re-simulating
    until it settles (`weft.planner.contention.settle_scales`): a rank computing while the
    others idle runs at its profiled (solo) speed. The result has 'compute_scales' (per rank).
    """
    prof = profile.scaled(plan.micro_batch)
    devs = workers_of(topology, plan.workers)
    ranks = [st.ranks for st in plan.stages]
    bounds = plan.chunk_bounds(chunks_per_stage)
    k = settings.compute_scale
    cpu_copy_bw, latency_s = settings.cpu_copy_bw, settings.latency_s
    if contention not in ("all", "overlap"):
        raise PlanError(f"contention must be 'all' or 'overlap', got {contention!r}")
    fwd = [sum(l.forward_s for l in prof.layers[i:j]) for i, j in bounds]
    over = float(prof.meta.get("stage_overhead_s", 0.0))  # one backward call per stage
    bwd = [sum(l.backward_s for l in prof.layers[i:j]) + over for i, j in bounds]
    out = [prof.layers[j - 1].output_bytes for i, j in bounds]
    M = plan.microbatches
    n = M if schedule != "pipedream" else max(4 * M, 4 * plan.num_stages)
    sched = build_schedule(schedule, ranks, n, chunks_per_stage)

    def nbytes(a):
        return out[a.chunk] if a.kind in ("SEND_F", "RECV_B") else out[a.chunk - 1]

    def copy(rank, a):
        return nbytes(a) / cpu_copy_bw if cpu_copy_bw and a.peer != rank else 0.0

    def duration(rank, a):
        return settings.action_overhead_s + work(rank, a)

    def work(rank, a):
        if a.kind == "F":
            return scales[rank] * fwd[a.chunk]
        if a.kind == "B":
            return scales[rank] * bwd[a.chunk]
        if a.kind.startswith(("SEND", "RECV")):
            return copy(rank, a)
        return 0.0

    def transfer(rank, a):
        if a.peer == rank:
            return 0.0
        src, dst = devs[rank], devs[a.peer]
        lat = _latency(topology, src, dst) if latency_s is None else latency_s
        return nbytes(a) / topology.path_bandwidth(src, dst) + lat

    scales = {r: k for r in sched}
    res = simulate_pipeline(sched, duration, transfer)
    if contention == "overlap" and k != 1.0:
        def run(sc):
            scales.update(sc)
            return simulate_pipeline(sched, duration, transfer)

        scales, res = settle_scales(sched, k, run)
    sync = 0.0
    for st in plan.stages:
        if st.replicas > 1:
            params = sum(l.param_bytes for l in prof.layers[st.first:st.end])
            sync = max(sync, _ring_time(st.ranks, params, devs, topology, settings))
    if schedule != "pipedream":  # then the shared parameters' gradients, one group at a time
        sync += sum(_ring_time(e["ranks"], e["bytes"], devs, topology, settings)
                    for e in shared_across(plan, profile, chunks_per_stage))
    if schedule == "pipedream":
        # steady state: the busiest rank's work per micro-batch (no flush, no bubble)
        per_mb = max(res["busy"].values()) / n
        step = per_mb * M + sync + settings.step_overhead_s
        return {"step_s": step, "samples_per_s": M * plan.micro_batch / step, "bubble": 0.0,
                "compute_scales": dict(scales)}
    step = res["makespan"] + sync + settings.step_overhead_s
    return {"step_s": step, "samples_per_s": M * plan.micro_batch / step,
            "bubble": res["bubble"], "compute_scales": dict(scales)}
