"""What plans cost on this machine's local gloo ranks, measured before they are searched.

    costs = measure_local_costs(4, workload, sample, model=net)   # or spec="examples/gpt.py"
    PlanModel(workload, build("local:4"), costs)

`weft plan auto --calibrate N --topology local:N` and `benchmarks/planner.py` use it. It
measures, without the plans themselves:

* compute contention (`weft.planner.contention_local`, statistic "slowest"): the slowest
  rank's median forward + backward of the model on `sample` with all N ranks computing,
  over the workload's own time for that pass (N ranks share this machine's cores; without
  a workload, over one rank's pass alone);
* gloo's collectives fitted to the ring model on a one-host star (`fit_gloo`);
* per kind and group size, the collectives measured right after compute as a step issues
  them (`weft.planner.collective_fit`), with a workload;
* the runtime's own costs (`weft.planner.runtime_costs`; Adam's rate per byte at the
  workload's parameter count, when there is a workload).

The figures hold for plans that run on these N ranks of this machine (a `local:N`
topology), not for other hosts' links or accelerators.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

from weft.errors import PlanError


def fit_gloo(world: int, quick: bool = False, log: Callable[[str], None] = print):
    """CostParams for gloo's built-in collectives on `world` ranks of one host, fitted to
    the ring model on a star of links that cost nothing (the CPU is the cost)."""
    from weft.collectives.costmodel import CostParams, fit
    from weft.collectives.emulate.shapes import star_slow
    from weft.collectives.fabric import Fabric
    from weft.collectives.ring import ring
    from weft.planner.collective_fit import measure_collectives

    if world < 2:
        return CostParams()
    sizes = [64 << 10, 1 << 20] if quick else [64 << 10, 512 << 10, 4 << 20]
    # the slowest rank's median of each kind on the whole world right after a barrier
    # (`collective_fit` measures every group size; the ring fit takes the world's)
    got = {(k, size): t for k, n, size, t in
           measure_collectives(world, sizes, repeats=3 if quick else 7, dtensor=False).samples
           if n == world}
    fab = Fabric(star_slow(world, fast=1e12, slow=1e12), [f"h{i}" for i in range(world)])
    samples = [(ring(kind, world), fab, size, size + 1, t) for (kind, size), t in got.items()]
    base = CostParams(alpha=50e-6, reduce_bw=4e9, step_overhead=20e-6,
                      cores=float(os.cpu_count()), copy_bw=2.5e9)
    params, err = fit(samples, base, free=("alpha", "copy_bw", "step_overhead"))
    log(f"gloo on {world} local ranks fitted to the ring model (mean error {err:.0%}): "
        f"{params}")
    return params


def measure_local_costs(world: int, workload=None, sample=None, model=None,
                        spec: str | None = None, quick: bool = False,
                        log: Callable[[str], None] = print):
    """`weft.planner.plan_cost.Costs` of `world` local gloo ranks (see the module doc).
    Contention needs the model (`model`, picklable, or its `spec`) and a micro-batch
    `sample`; the per-size collectives need the `workload` (their compute gap is half its
    median layer). `quick`: the gloo fit and the runtime costs only, fewer repeats."""
    from weft.planner.contention import contention_local
    from weft.planner.plan_cost import Costs
    from weft.planner.runtime_costs import measure_runtime_costs

    if world < 1:
        raise PlanError(f"calibration needs at least one local rank, got {world}")
    scale, measured_scale = 1.0, ""
    if world > 1 and not quick and sample is not None and (model is not None or spec):
        # the slowest rank's median pass: a step is as slow as its slowest rank
        got = contention_local(world, sample, model=model, spec=spec, rounds=4,
                               statistic="slowest")
        scale, measured_scale = got["compute_scale"], "over one rank's alone"
        alone = sum(l.compute_s(int(sample.shape[0]), 1) for l in workload.layers) \
            if workload is not None else 0.0
        if alone > 0:
            # over the workload's own time for that pass, which the scale multiplies: the
            # profile sums units timed alone and may be 10-20% under a whole pass timed
            # alone, and one rank's alone moves by as much between ranks (docs/planner.md)
            scale = statistics.median(got["concurrent_s"]) / alone
            measured_scale = f"{statistics.median(got['concurrent_s']) * 1e3:.1f} ms over " \
                             f"the workload's {alone * 1e3:.1f} ms"
    params = fit_gloo(world, quick, log)
    fits = ()
    if world > 1 and not quick and workload is not None and sample is not None:
        from weft.planner.collective_fit import measure_collectives

        mb = int(sample.shape[0])
        seg = statistics.median(l.fixed_s + mb * (l.forward.rep + l.forward.split +
                                                  l.backward.rep + l.backward.split)
                                for l in workload.layers) / 2
        measured = measure_collectives(world, repeats=9, after=seg)
        log(f"collectives measured after {seg * 1e3:.2f} ms of compute (solo)")
        log(measured.summary())
        fits = measured.table
    costs = Costs(compute_scale=scale, collective=params, collective_fits=fits)
    if world > 1:  # overlap, fully_shard per call, the optimizer per tensor and per byte
        numel = int(workload.param_bytes // 4) if workload is not None else None
        rc = measure_runtime_costs(world, repeats=5 if quick else 9, units=4 if quick else 8,
                                   optimizer_numel=numel or None)
        costs = rc.apply(costs)
        what = rc.summary()
    else:
        what = "one rank: no runtime costs"
    log(f"calibration on {world} local ranks: compute_scale {scale:.2f} "
        f"({'contention_local: ' + measured_scale if measured_scale else 'not measured'}); "
        f"{what}")
    return costs
