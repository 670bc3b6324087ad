"""The optical fabric chosen for a plan: port budget, never worse than the ring, the CLI."""

import pytest

from weft.planner.fabric import optimize_fabric
from weft.planner.shape import Shape
from weft.planner.workload import transformer
from weft.topology.io import load
from weft.topology.optical import circuits, same_circuits

BW = 12.5e9


@pytest.mark.parametrize("shape", [Shape(dp_replicate=4, tp=2, global_batch=16, flavour="weft"),
                                   Shape(pp=2, tp=4, global_batch=16, microbatches=4)],
                         ids=lambda s: s.label())
def test_chosen_fabric_respects_ports_and_beats_or_ties_the_ring(shape):
    wl = transformer(n_layer=4, d_model=1024, n_head=8, seq=512, flops=100e12)
    res = optimize_fabric(wl, shape, ports=4, bandwidth=BW, rounds=2, place_budget=0.3)
    assert max(circuits(res.optical.topology, BW).values()) <= 4
    assert res.times["optical"] <= res.times["ring"] * (1 + 1e-9)
    assert res.times["fat tree"] <= res.times["optical"] * (1 + 1e-9)  # the non-blocking ideal
    assert sorted(res.optical.placement) == sorted(res.topologies["optical"].device_names)


def test_a_single_ring_collective_gains_nothing_on_the_ring():
    """weft's collectives are rings in group order: one dimension's ring is served best by
    the ring of all servers with every port (the choice is that ring), and the torus of
    the same ports, whose rows are rings of half the circuits, is slower."""
    wl = transformer(n_layer=4, d_model=1024, n_head=8, seq=512, flops=100e12)
    res = optimize_fabric(wl, Shape(dp_replicate=8, global_batch=16, flavour="weft"), ports=4,
                          bandwidth=BW, rounds=2, place_budget=0.3)
    assert res.times["optical"] == pytest.approx(res.times["ring"], rel=1e-6)
    assert same_circuits(res.optical.topology, res.topologies["ring"])
    assert res.ratio("torus") > 1.2


def test_a_choice_that_is_the_ring_predicts_the_rings_time():
    """pp4xtp2 on 4 ports: the choice is the ring in another order; its placement search
    started elsewhere and found up to 4% more than the ring's own, which the ring gets too."""
    wl = transformer(n_layer=8, d_model=2048, n_head=16, seq=1024, flops=300e12)
    shape = Shape(pp=4, tp=2, global_batch=32, microbatches=4, flavour="weft")
    res = optimize_fabric(wl, shape, ports=4, bandwidth=BW, rounds=2, place_budget=0.3)
    assert same_circuits(res.optical.topology, res.topologies["ring"])
    assert res.ratio("ring") <= 1 + 1e-9
    assert sorted(res.placements["ring"]) == sorted(res.topologies["ring"].device_names)


def test_topology_optimize_cli(tmp_path, capsys):
    from weft.cli import main

    model = "transformer:n_layer=4,d_model=512,n_head=8,seq=256,flops=1e13"
    plan = tmp_path / "p.yaml"
    plan.write_text("format: weft.plan/1\nmesh: {dp_replicate: 2, tp: 4}\n"
                    "tensor_parallel: [{module: blocks.*.attn.q, style: colwise}]\n")
    out = tmp_path / "topo.yaml"
    assert main(["topology", "optimize", "--plan", str(plan), "--model", model, "--batch", "8",
                 "--ports", "4", "--out", str(out), "--rounds", "2", "--place-budget",
                 "0.2"]) == 0
    topo = load(out)
    assert len(topo.compute_devices) == 8
    assert max(circuits(topo, BW).values()) <= 4
    text = capsys.readouterr().out
    assert "torus" in text and "ring" in text and "fat tree" in text
    assert main(["topology", "optimize", "--plan", str(plan), "--model", model, "--ports", "0",
                 "--out", str(out)]) == 2
