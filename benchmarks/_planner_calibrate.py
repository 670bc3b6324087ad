"""Costs of the machine for benchmarks/planner.py's predictions, measured in the same run
without the plans under test (`weft.planner.local_costs`: compute contention, gloo's
collectives fitted to the ring model and per kind and group size, the runtime's own
costs), once per world size and model."""

from __future__ import annotations

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
    from weft.planner.local_costs import measure_local_costs as measure

    gpt, model = gpt_model(cfg)
    sample = gpt.example_input(max(1, batch // world))
    return measure(world, wl, sample, model=model, quick=quick)


def emulated_costs(world, cfg, batch, quick):
    """The local calibration with the collectives' CPU terms of the emulated links."""
    from dataclasses import replace

    from weft.collectives.costmodel import CostParams

    base = calibrate_local(world, None, cfg, batch, quick)
    c = base.collective
    return replace(base, collective=CostParams(alpha=c.alpha, step_overhead=c.step_overhead,
                                               cores=c.cores, link_efficiency=0.97),
                   collective_fits=())  # the local fits hold for the host's own links only
