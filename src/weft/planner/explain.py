"""The text of `weft plan explain`: every term of a plan's predicted step time and memory."""

from __future__ import annotations

from weft.planner.plan_cost import Estimate
from weft.planner.workload import Workload
from weft.units import fmt_bytes

WHAT = {
    "compute": "forward + backward (+ recompute) of the busiest pipeline rank, all micro-batches",
    "tensor-parallel collectives": "the layers' tp all-reduces / all-gathers, not overlapped",
    "pipeline sends": "activations forward and gradients back between stages",
    "pipeline actions": "the schedule's own cost per forward / backward of a micro-batch",
    "pipeline bubble": "pipeline fill and drain: time beyond M x the mean stage's work",
    "data-parallel total": "gradient synchronisation (all-reduce, or fully_shard's all-gathers "
                           "and reduce-scatters)",
    "data-parallel exposed": "the part not hidden behind the compute (counted in the step)",
    "optimizer": "optimizer step over this rank's parameters (per byte and per tensor)",
    "overhead": "fixed cost per step",
}


def _ms(x: float) -> str:
    return f"{x * 1e3:.3f} ms"


def explain(est: Estimate, workload: Workload, topology: str = "",
            algorithms: list[str] = ()) -> str:
    """`algorithms`: of the data-parallel all-reduce per pipeline rank
    (`PlanModel.dp_algorithms`)."""
    s = est.shape
    head = (f"plan {s.label()} on {s.world} devices of {topology}: {s.global_batch} samples "
            f"per step = {s.dp} replicas x {s.microbatches} micro-batches x {s.micro_batch:g}")
    pred = (f"predicted step {_ms(est.step_s)} ({s.global_batch / est.step_s:,.1f} samples/s), "
            f"bubble {est.bubble:.1%}, communication {est.comm_share:.0%} of the step")
    lines = [head, pred, "", "time per step:"]
    counted = ("compute", "tensor-parallel collectives", "pipeline sends", "pipeline actions",
               "pipeline bubble",
               "data-parallel exposed", "optimizer", "overhead")
    for k, v in est.terms.items():
        mark = "+" if k in counted else " "
        lines.append(f"  {mark} {k:<30} {_ms(v):>14}   {WHAT.get(k, '')}")
    lines.append("  (step = pipeline time (compute + tp + sends + actions + bubble of the busiest "
                 "rank) + exposed sync + optimizer + overhead)")
    calls = [", ".join(f"{n} {k}" for k, n in sorted(c.items()) if n) for c in est.calls]
    if any(calls):
        lines.append("  data-parallel collectives per step: " + "; ".join(
            f"pipeline rank {r}: {c or 'none'}" for r, c in enumerate(calls)))
    if any(algorithms):
        lines.append(f"  data-parallel all-reduce ({s.communicator}'s): " + "; ".join(
            f"pipeline rank {r}: {a}" for r, a in enumerate(algorithms) if a))
    cols = (f"  {'stage':<6}{'layers':<28}{'forward':>12}{'backward':>12}{'tp comm':>12}"
            f"{'send':>12}")
    lines += ["", "stages (per micro-batch):", cols]
    for st in est.stages:
        i, j = st["layers"]
        names = workload.layers[i].name + (f" .. {workload.layers[j - 1].name}" if j - i > 1
                                           else "")
        lines.append(f"  {st['stage']:<6}{names[:27]:<28}{_ms(st['forward_s']):>12}"
                     f"{_ms(st['backward_s']):>12}{_ms(st['tp_s']):>12}{_ms(st['send_s']):>12}")
    mem = (f"memory per device (pipeline rank {est.memory_stage}, the largest): "
           f"{fmt_bytes(est.memory.peak)}")
    lines += ["", mem]
    for k, v in est.memory.terms.items():
        lines.append(f"    {k:<22} {fmt_bytes(v):>12}")
    lines.append("  (peak = parameters + optimizer state + the larger of the forward/backward "
                 "and the optimizer-step working sets)")
    shown = ", ".join(f"{r}:{d}" for r, d in enumerate(est.placement[:16]))
    lines += ["", "placement (mesh rank -> device): " + shown
              + (" ..." if len(est.placement) > 16 else "")]
    return "\n".join(lines)
