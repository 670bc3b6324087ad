"""`weft schedule ...` commands."""

import json
from pathlib import Path

import pytest

from weft.cli import main
from weft.cluster.policies import policy_names

GAVEL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gavel"
needs_gavel = pytest.mark.skipif(not GAVEL.exists(), reason=f"Gavel data not found at {GAVEL}")


def test_policies_lists_every_policy(capsys):
    assert main(["schedule", "policies"]) == 0
    out = capsys.readouterr().out
    for name in policy_names():
        assert name in out


@needs_gavel
def test_simulate_writes_results_and_plot(tmp_path, capsys):
    rc = main(["schedule", "simulate", "--jobs", "40", "--rate", "20", "--cluster", "4:4:4",
               "--throughputs", str(GAVEL / "simulation_throughputs.json"), "--policy", "fifo",
               "--policy", "max_min_fairness", "--policy", "max_min_fairness_packed", "--pop", "2",
               "--window", "10:30", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["policy"] for r in data["results"]] == ["fifo+pop2", "max_min_fairness+pop2",
                                                      "max_min_fairness_packed+pop2"]
    for r in data["results"]:
        assert r["jobs_measured"] == 20 and r["avg_jct_hours"] > 0
        assert {str(i) for i in range(10, 30)} <= set(r["jct_seconds"])
    assert (tmp_path / "jct_cdf.png").read_bytes()[:4] == b"\x89PNG"


@needs_gavel
def test_simulate_bad_trace_is_a_clear_error(tmp_path, capsys):
    lines = (GAVEL / "traces/physical_cluster/max_min_fairness.trace").read_text().splitlines()
    cols = lines[1].split("\t")
    cols[-1] = "-3"
    bad = tmp_path / "bad.trace"
    bad.write_text("\n".join([lines[0], "\t".join(cols)] + lines[2:]) + "\n")
    rc = main(["schedule", "simulate", "--trace", str(bad), "--throughputs",
               str(GAVEL / "physical_cluster_throughputs.json"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: field 'arrival_time' must be >= 0" in err
    assert not (tmp_path / "o").exists()


def test_run_rejects_unknown_job_type(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("accelerators: {fast: 2}\nthroughputs: {mlp: {fast: 10}}\n")
    (tmp_path / "j.yaml").write_text("jobs:\n  - {type: cnn, steps: 5}\n")
    assert main(["schedule", "run", str(tmp_path / "c.yaml"), str(tmp_path / "j.yaml")]) == 2
    assert "jobs[0]: unknown job type 'cnn'" in capsys.readouterr().err
