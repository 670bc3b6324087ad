"""`--calibrate N` on a `local:N` topology measures this machine's costs for the plan: compute
contention of the model, gloo's collectives, the runtime's own costs."""

import pytest

from weft.errors import TopologyError
from weft.plan.io import loads
from weft.planner.plan_cost import Costs
from weft.topology.builders import is_local
from weft.topology.io import build

TINY = "transformer:n_layer=2,d_model=64,n_head=4,seq=32,vocab=128,flops=1e9"


def test_local_topology_is_this_machines_cpu_ranks():
    t = build("local:3").validate()
    assert [d.name for d in t.compute_devices] == ["r0", "r1", "r2"]
    assert {d.kind for d in t.compute_devices} == {"cpu"} and list(t.hosts()) == ["localhost"]
    assert t.path_bandwidth("r0", "r2") >= 1e12
    assert is_local(t) and not is_local(build("ring:4")) and not is_local(build("multi_node:2x2"))
    with pytest.raises(TopologyError, match="local: need an integer >= 1, got 0"):
        build("local:0")


def _compute_ms(text):
    line = next(l for l in text.splitlines() if l.strip().startswith("+ compute "))
    return float(line.split()[2])


def test_calibrate_on_a_local_topology_charges_what_was_measured(tmp_path, capsys, monkeypatch):
    """The measurement is replaced (no ranks start): what it returns is what the plan is
    costed with, a given --compute-scale beats the measured one, and a calibration on
    another number of ranks than the plan's is refused."""
    from weft.cli import main

    asked = []

    def fake(world, workload=None, sample=None, model=None, spec=None, quick=False, log=print):
        asked.append((world, workload is not None, sample, spec))
        return Costs(compute_scale=2.0)
    monkeypatch.setattr("weft.planner.local_costs.measure_local_costs", fake)
    plan = tmp_path / "dp.yaml"
    plan.write_text("format: weft.plan/1\nmesh: {dp_replicate: 4}\n")
    argv = ["plan", "explain", str(plan), "--model", TINY, "--topology", "local:4",
            "--batch", "8"]
    assert main(argv) == 0
    plain = _compute_ms(capsys.readouterr().out)
    assert main(argv + ["--calibrate", "4"]) == 0
    out = capsys.readouterr().out
    # an analytic model: nothing to run for contention, so no sample and no spec
    assert asked == [(4, False, None, None)] and "compute contention is not measured" in out
    assert _compute_ms(out) == pytest.approx(2 * plain, rel=1e-2)
    assert main(argv + ["--calibrate", "4", "--compute-scale", "3"]) == 0
    assert _compute_ms(capsys.readouterr().out) == pytest.approx(3 * plain, rel=1e-2)
    assert main(argv + ["--calibrate", "2"]) == 2
    assert ("--calibrate 2 measures 2 local ranks, but the plan is for 4 devices of local4"
            in capsys.readouterr().err)
    assert len(asked) == 2


@pytest.mark.slow
def test_auto_calibrated_on_two_local_ranks_measures_the_model_and_plans(tmp_path, capsys):
    """End to end on this machine: contention of the example GPT, gloo's collectives and
    the runtime's costs measured on 2 ranks, then a plan for them written."""
    from weft.cli import main

    out = tmp_path / "p.yaml"
    assert main(["plan", "auto", "--model", "examples/gpt.py", "--topology", "local:2",
                 "--batch", "8", "--micro-batch", "4", "--repeats", "1", "--calibrate", "2",
                 "--out", str(out), "--top", "2"]) == 0
    text = capsys.readouterr().out
    # the scale is the slowest rank's concurrent pass over the workload's own time for it
    import re

    got = re.search(r"compute_scale ([\d.]+) \(contention_local: ([\d.]+) ms over the "
                    r"workload's ([\d.]+) ms\)", text)
    assert got, text
    scale, conc, alone = map(float, got.groups())
    assert scale == pytest.approx(conc / alone, rel=0.02, abs=0.01)
    assert "gloo on 2 local ranks fitted to the ring model" in text
    assert "collectives measured after" in text
    assert loads(out.read_text()).mesh.size == 2
