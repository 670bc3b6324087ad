"""Costs of the machine for benchmarks/planner.py's predictions, measured in the same run
without the plans under test: compute contention, gloo's collectives, Adam's update rate."""

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
    key = (world, tuple(sorted(cfg.items())), batch)
    if key not in _CALIBRATED:
        _CALIBRATED[key] = _calibrate_local(world, cfg, batch, quick)
    return _CALIBRATED[key]


def _calibrate_local(world: int, cfg, batch: int, quick: bool):
    import torch

    from weft.planner import contention_local
    from weft.planner.plan_cost import Costs

    gpt, model = gpt_model(cfg)
    sample = gpt.example_input(max(1, batch // world))
    if world > 1 and not quick:
        c = contention_local(world, sample, model=model, rounds=4)
    else:  # quick: not measured
        c = {"compute_scale": 1.0}
    opt = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    t0 = time.perf_counter()
    n = 5
    for _ in range(n):
        opt.step()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    opt_bw = nbytes * n / (time.perf_counter() - t0)
    params = fit_gloo(world, quick)
    print(f"calibration on {world} local ranks: compute_scale {c['compute_scale']:.2f} "
          f"({'not measured (--quick)' if quick else 'contention_local'}), Adam "
          f"{opt_bw / 1e6:.0f} MB/s of parameters")
    return Costs(compute_scale=c["compute_scale"], collective=params, optimizer_bw=opt_bw)


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
                    dist.all_gather_into_tensor(outs, x[:size // 4 // n])
                else:
                    dist.reduce_scatter_tensor(x[:size // 4 // n], outs)
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
    from weft.planner.plan_cost import Costs

    base = calibrate_local(world, None, cfg, batch, quick)
    return Costs(compute_scale=base.compute_scale, optimizer_bw=base.optimizer_bw,
                 collective=__import__("weft.collectives.costmodel", fromlist=["CostParams"])
                 .CostParams(alpha=base.collective.alpha, step_overhead=base.collective
                             .step_overhead, cores=base.collective.cores, link_efficiency=0.97))
