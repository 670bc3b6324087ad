"""Collectives measured per kind and group size: the line fit, its use by the plan cost
model in place of the ring model, and the measurement on 2 gloo ranks."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.errors import PlanError
from weft.planner.collective_fit import (DTENSOR_KINDS, KINDS, fit_lines, fitted_seconds,
                                        measure_collectives)
from weft.planner.comm import Comm
from weft.planner.network import Network
from weft.planner.plan_cost import Costs, PlanModel
from weft.planner.shape import Shape
from weft.planner.workload import transformer
from weft.topology.builders import multi_node

LINES = {("allreduce", 2): (3e-3, 1e-9), ("allreduce", 4): (5e-3, 2e-9),
         ("all_gather", 4): (1e-3, 0.5e-9)}


def _samples(noise=()):
    out = []
    for (kind, n), (a, b) in LINES.items():
        for k, size in enumerate((4096, 65536, 1 << 20, 4 << 20)):
            f = 1 + (noise[k % len(noise)] if noise else 0.0)
            out.append((kind, n, size, (a + b * size) * f))
    return out


def test_fit_lines_recovers_each_kind_and_group_size():
    table, err = fit_lines(_samples())
    assert err == pytest.approx(0.0, abs=1e-9)
    assert {(k, n) for k, n, _, _ in table} == set(LINES)
    for kind, n, a, b in table:
        assert (a, b) == pytest.approx(LINES[kind, n], rel=1e-6)
        assert fitted_seconds(table, kind, n, 1 << 20) == pytest.approx(
            LINES[kind, n][0] + LINES[kind, n][1] * (1 << 20))
    assert fitted_seconds(table, "reduce_scatter", 4, 1024) is None
    # noise: the terms stay non-negative and the error is reported
    table, err = fit_lines(_samples(noise=(0.3, -0.2, 0.1, -0.25)))
    assert all(a >= 0 and b >= 0 for _, _, a, b in table) and 0.05 < err < 0.3


def test_fit_lines_rejects_bad_samples():
    with pytest.raises(PlanError, match="allreduce n=2 4096 B: 0.0 s is not a positive time"):
        fit_lines([("allreduce", 2, 4096, 0.0)])
    with pytest.raises(PlanError, match="at least 2 ranks"):
        measure_collectives(1)
    with pytest.raises(PlanError, match="sizes must be positive"):
        measure_collectives(2, sizes=(0, 4096))


def test_fits_replace_the_ring_for_the_fitted_group_sizes_only():
    topo = multi_node(1, 4)
    net = Network(topo)
    devs = [d.name for d in topo.compute_devices]
    table, _ = fit_lines(_samples())
    ring, fitted = Comm(net), Comm(net, fits=table)
    pairs = fitted.groups([devs[:2], devs[2:]])
    four = fitted.groups([devs])
    assert fitted.collective("allreduce", pairs, 1 << 20) == pytest.approx(3e-3 + 1e-9 * (1 << 20))
    assert fitted.collective("allreduce", four, 4096) == pytest.approx(5e-3 + 2e-9 * 4096)
    assert fitted.algorithm("allreduce", four, 4096) == "measured"
    # not fitted: reduce-scatter, and all-gather on pairs: the ring model
    for kind, gs in (("reduce_scatter", four), ("all_gather", pairs)):
        assert fitted.collective(kind, gs, 1 << 20) == ring.collective(
            kind, ring.groups(gs.groups), 1 << 20)


def test_plan_model_charges_the_fitted_all_reduce():
    """dp4 with nothing overlapped: the data-parallel total is the fitted all-reduce of
    the gradients, bucket by bucket."""
    wl = transformer(n_layer=2, d_model=64, n_head=4, seq=32, flops=1e12)
    topo = multi_node(1, 4)
    table, _ = fit_lines(_samples())
    shape = Shape(dp_replicate=4, global_batch=16, flavour="weft")
    est = PlanModel(wl, topo, Costs(overlap=0.0, collective_fits=table)).estimate(shape)
    P = sum(l.params.rep + l.params.split for l in wl.layers)
    bucket = shape.bucket_mb * 2**20
    first = min(P, 2**20)  # DataParallel's first bucket: 1 MiB, so the sync starts early
    full, rest = divmod(P - first, bucket)
    want = (5e-3 + 2e-9 * first) + full * (5e-3 + 2e-9 * bucket) + \
        (5e-3 + 2e-9 * rest if rest else 0.0)
    assert P > 2**20  # two buckets: the calls the runtime makes
    assert est.terms["data-parallel total"] == pytest.approx(want)
    plain = PlanModel(wl, topo, Costs(overlap=0.0)).estimate(shape)
    assert plain.terms["data-parallel total"] != pytest.approx(want)


def test_tensor_parallel_collectives_are_charged_at_dtensors_fit():
    """dp2 x tp2: the layers' tp all-reduces are charged at the "dtensor_allreduce" fit
    of groups of 2 where it is measured, at the plain all-reduce's fit where not; the
    data-parallel sync keeps the plain fit either way."""
    wl = transformer(n_layer=2, d_model=64, n_head=4, seq=32, flops=1e12)
    topo = multi_node(1, 4)
    plain, _ = fit_lines(_samples())
    own = plain + (("dtensor_allreduce", 2, 9e-3, 4e-9),)
    shape = Shape(dp_replicate=2, tp=2, global_batch=16)
    got = {name: PlanModel(wl, topo, Costs(overlap=0.0, collective_fits=t)).estimate(shape)
           for name, t in (("plain", plain), ("own", own))}
    b = got["own"].shape.micro_batch
    calls = [c.nbytes * b for l in wl.layers for c in l.collectives if c.kind == "allreduce"]
    assert len(calls) == 4 * 2  # two forward and two backward per block
    # the head's all-gather (not fitted on pairs: the ring model) is the same in both
    (a0, b0), M = LINES["allreduce", 2], got["own"].shape.microbatches
    tp = {name: est.terms["tensor-parallel collectives"] for name, est in got.items()}
    assert tp["own"] - tp["plain"] == pytest.approx(
        M * sum((9e-3 - a0) + (4e-9 - b0) * n for n in calls))
    assert got["own"].terms["data-parallel total"] == pytest.approx(
        got["plain"].terms["data-parallel total"])


def _dtensor_results(sizes):
    import torch.distributed as dist

    from weft.planner.collective_fit import _dtensor_op, _mesh

    mesh = _mesh(dist.get_world_size(), 2)
    return {(k, s): _dtensor_op(k, 2, s, mesh)().tolist() for k in DTENSOR_KINDS for s in sizes}


def test_dtensor_kinds_move_what_tensor_parallelism_moves():
    """On 2 gloo ranks each rank holding ones: the all-reduce gives every rank the whole
    tensor of 2s, the all-gather the whole tensor of ones from the halves, the
    reduce-scatter each rank its half of 2s."""
    from weft.launch import launch

    got = launch(_dtensor_results, 2, ((4096, 1 << 16),), timeout=120)
    for out in got:
        for s in (4096, 1 << 16):
            n = s // 4
            assert out["dtensor_allreduce", s] == [2.0] * n
            assert out["dtensor_all_gather", s] == [1.0] * n
            assert out["dtensor_reduce_scatter", s] == [2.0] * (n // 2)


@pytest.mark.slow
def test_measure_collectives_on_two_gloo_ranks():
    got = measure_collectives(2, sizes=(4096, 1 << 20), repeats=2, timeout=120)
    kinds = (*KINDS, *DTENSOR_KINDS)
    assert {(k, n) for k, n, _, _ in got.table} == {(k, 2) for k in kinds}
    assert sorted((k, n, s) for k, n, s, _ in got.samples) == sorted(
        (k, 2, s) for k in kinds for s in (4096, 1 << 20))
    assert all(math.isfinite(t) and t > 0 for *_, t in got.samples)
    assert all(a >= 0 and b >= 0 for _, _, a, b in got.table)
    assert math.isfinite(got.error) and "allreduce n=2" in got.summary()
    # right after 30 ms of compute: the compute alone is taken off (a 4 KiB collective
    # on 2 ranks takes a few ms at most; with the compute counted it would be >= 30 ms)
    after = measure_collectives(2, sizes=(4096,), repeats=2, after=0.03, timeout=120)
    assert all(math.isfinite(t) and 0 < t < 0.015 for *_, t in after.samples)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 4096), min_size=1, max_size=2000), st.sampled_from([1, 2, 3]))
def test_model_buckets_are_the_runtimes(numels, cap_mb):
    """The plan model's gradient buckets (`dp_cost.bucket_bytes`) against the ones weft's
    DataParallel makes from parameters of those sizes (each at most 1/64 of a bucket, at
    most 32 buckets): the same bytes, the first bucket 1 MiB, and as many buckets or one
    more (the runtime fills them with whole parameters, so each ends a little early; less
    than one bucket in all)."""
    import torch

    from weft.parallel.data import DataParallel
    from weft.planner.dp_cost import bucket_bytes

    cap = cap_mb * 2**20
    params = [torch.nn.Parameter(torch.zeros(n)) for n in numels]
    runtime = [4 * b.numel for b in DataParallel._make_buckets(params, cap)]
    model = bucket_bytes(4.0 * sum(numels), cap)
    assert sum(model) == pytest.approx(sum(runtime))
    assert model[0] == min(4 * sum(numels), 2**20) and runtime[0] <= 2**20
    assert len(model) <= len(runtime) <= len(model) + 1


@pytest.mark.slow
def test_fit_gloo_fits_the_plain_kinds_only():
    """`fit_gloo` fits the ring model to the plain collectives (the DTensor kinds have no
    ring schedule): on 2 ranks its fit predicts a 64 KiB all-reduce measured apart within
    a factor of 5 (the loopback fit's error is 30-40%), and it logs the fit."""
    from weft.collectives.costmodel import predict
    from weft.collectives.emulate.shapes import star_slow
    from weft.collectives.fabric import Fabric
    from weft.collectives.ring import ring
    from weft.planner.local_costs import fit_gloo

    got = measure_collectives(2, sizes=(64 << 10,), repeats=3, timeout=120, dtensor=False)
    assert {k for k, *_ in got.samples} == set(KINDS)
    lines = []
    params = fit_gloo(2, quick=True, log=lines.append)
    assert "fitted to the ring model" in lines[0]
    fab = Fabric(star_slow(2, fast=1e12, slow=1e12), ["h0", "h1"])
    measured = next(t for k, n, s, t in got.samples if k == "allreduce")
    predicted = predict(ring("allreduce", 2), fab, 64 << 10, (64 << 10) + 1, params)
    assert 0.2 < predicted / measured < 5
