"""Costs of the machine for benchmarks/planner.py's predictions, measured in the same run
without the plans under test: compute contention, gloo's collectives (fitted to the ring
model, and per kind and group size), Adam's update rate."""

from __future__ import annotations

import os
import statistics
import time

from _planner_gpt import gpt_model

_CALIBRATED: dict = {}


def calibrate_local(world: int, wl, cfg, batch: int, quick: bool):
    """Costs of local gloo ranks, measured without the plans under test: compute
    contention (weft.planner.contention_local), gloo's collectives fitted to the ring
    model on a one-host star, Adam's update rate (once per world size and model)."""
    key = (world, tuple(sorted(cfg.items())), batch, wl is not None)
    if key not in _CALIBRATED:
        _CALIBRATED[key] = _calibrate_local(world, wl, cfg, batch, quick)
    return _CALIBRATED[key]


def _calibrate_local(world: int, wl, cfg, batch: int, quick: bool):
    from weft.planner import contention_local
    from weft.planner.plan_cost import Costs
    from weft.planner.runtime_costs import measure_runtime_costs

    gpt, model = gpt_model(cfg)
    sample = gpt.example_input(max(1, batch // world))
    if world > 1 and not quick:
        # the slowest rank's median pass over the solo minimum: the step is timed as the
        # slowest rank at its median, the profile is a minimum (docs/planner.md)
        c = {"compute_scale": contention_local(world, sample, model=model, rounds=4,
                                               statistic="slowest")["compute_scale"]}
    else:  # quick: not measured
        c = {"compute_scale": 1.0}
    params = fit_gloo(world, quick)
    fits = ()
    if world > 1 and not quick and wl is not None:
        # per kind and group size, at the plans' sizes, each right after compute as long as
        # half a typical layer's forward + backward (the profile's median layer at this
        # micro-batch), as a step issues them
        from weft.planner.collective_fit import measure_collectives

        mb = max(1, batch // world)
        seg = statistics.median(l.fixed_s + mb * (l.forward.rep + l.forward.split +
                                                  l.backward.rep + l.backward.split)
                                for l in wl.layers) / 2
        measured = measure_collectives(world, repeats=9, after=seg)
        print(f"collectives measured after {seg * 1e3:.2f} ms of compute (solo)")
        print(measured.summary())
        fits = measured.table
    costs = Costs(compute_scale=c["compute_scale"], collective=params, collective_fits=fits)
    if world > 1:  # overlap, fully_shard per call, the optimizer per tensor and per byte
        rc = measure_runtime_costs(world, repeats=5 if quick else 9, units=4 if quick else 8)
        costs = rc.apply(costs)
        what = (f"{rc.summary()}; pipeline action {costs.pipeline_action_s * 1e3:.2f} ms beyond "
                f"its sends")
    else:
        what = "one rank: no runtime costs"
    print(f"calibration on {world} local ranks: compute_scale {c['compute_scale']:.2f} "
          f"({'not measured (--quick)' if quick else 'contention_local'}); {what}")
    return costs


def gloo_rank(sizes, reps):
    import torch
    import torch.distributed as dist

    out = {}
    for kind in ("allreduce", "all_gather", "reduce_scatter"):
        for size in sizes:
            n = dist.get_world_size()
            x = torch.ones(size // 4)
            outs = torch.empty(size // 4 // n * n)
            ts = []
            for i in range(reps + 1):
                dist.barrier()
                t0 = time.perf_counter()
                if kind == "allreduce":
                    dist.all_reduce(x)
                elif kind == "all_gather":
                    dist.all_gather_single(outs, x[:size // 4 // n])
                else:
                    dist.reduce_scatter_single(x[:size // 4 // n], outs)
                t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                if i:
                    ts.append(float(t))
            out[kind, size] = statistics.median(ts)
    return out


def fit_gloo(world: int, quick: bool):
    """CostParams for gloo's built-in collectives on one host, fitted to the ring model."""
    from weft.collectives.costmodel import CostParams, fit
    from weft.collectives.emulate.shapes import star_slow
    from weft.collectives.fabric import Fabric
    from weft.collectives.ring import ring
    from weft.launch import launch

    if world < 2:
        return CostParams()
    sizes = [64 << 10, 1 << 20] if quick else [64 << 10, 512 << 10, 4 << 20]
    got = launch(gloo_rank, world, args=(sizes, 3 if quick else 7), timeout=300)[0]
    fab = Fabric(star_slow(world, fast=1e12, slow=1e12), [f"h{i}" for i in range(world)])
    samples = [(ring(kind, world), fab, size, size + 1, t) for (kind, size), t in got.items()]
    base = CostParams(alpha=50e-6, reduce_bw=4e9, step_overhead=20e-6,
                      cores=float(os.cpu_count()), copy_bw=2.5e9)
    params, err = fit(samples, base, free=("alpha", "copy_bw", "step_overhead"))
    print(f"gloo on {world} local ranks fitted to the ring model (mean error {err:.0%}): "
          f"{params}")
    return params


def emulated_costs(world, cfg, batch, quick):
    """The local calibration with the collectives' CPU terms of the emulated links."""
    from dataclasses import replace

    from weft.collectives.costmodel import CostParams

    base = calibrate_local(world, None, cfg, batch, quick)
    c = base.collective
    return replace(base, collective=CostParams(alpha=c.alpha, step_overhead=c.step_overhead,
                                               cores=c.cores, link_efficiency=0.97),
                   collective_fits=())  # the local fits hold for the host's own links only
