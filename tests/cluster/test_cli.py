"""`weft cluster ...` commands (and the deprecated `weft schedule` alias)."""

import json

import pytest

from weft.cli import main
from weft.cluster.model import ClusterError
from weft.cluster.policies import policy_names


def test_policies_lists_every_policy(capsys):
    assert main(["cluster", "policies"]) == 0
    out, err = capsys.readouterr()
    for name in policy_names():
        assert name in out
    assert err == ""


def test_schedule_is_a_deprecated_alias_that_still_works(capsys):
    assert main(["schedule", "policies"]) == 0
    out, err = capsys.readouterr()
    assert all(name in out for name in policy_names())
    assert err.count("\n") == 1 and "`weft schedule` is deprecated" in err and "weft cluster" in err


def test_simulate_writes_results_and_plot(tmp_path, capsys, gavel_dir):
    rc = main(["cluster", "simulate", "--jobs", "40", "--rate", "20", "--cluster", "4:4:4",
               "--gavel-dir", str(gavel_dir), "--policy", "fifo",
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


def test_simulate_bad_trace_is_a_clear_error(tmp_path, capsys, gavel_dir):
    lines = (gavel_dir / "traces/physical_cluster/max_min_fairness.trace").read_text().splitlines()
    cols = lines[1].split("\t")
    cols[-1] = "-3"
    bad = tmp_path / "bad.trace"
    bad.write_text("\n".join([lines[0], "\t".join(cols)] + lines[2:]) + "\n")
    rc = main(["cluster", "simulate", "--trace", str(bad), "--throughputs",
               str(gavel_dir / "physical_cluster_throughputs.json"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: column 10 (arrival_time): must be >= 0, got '-3'" in err
    assert not (tmp_path / "o").exists()


def test_run_rejects_unknown_job_type(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("accelerators: {fast: 2}\nthroughputs: {mlp: {fast: 10}}\n")
    (tmp_path / "j.yaml").write_text("jobs:\n  - {type: cnn, steps: 5}\n")
    assert main(["cluster", "run", str(tmp_path / "c.yaml"), str(tmp_path / "j.yaml")]) == 2
    assert "jobs[0]: unknown job type 'cnn'" in capsys.readouterr().err


def test_gavel_dir_is_an_option_or_an_environment_variable(tmp_path, monkeypatch, capsys):
    from weft.cluster import gavel

    assert gavel.gavel_dir(tmp_path) == tmp_path
    monkeypatch.setenv("WEFT_GAVEL_DIR", str(tmp_path))
    assert gavel.gavel_dir() == tmp_path
    monkeypatch.setenv("WEFT_GAVEL_DIR", str(tmp_path / "nope"))
    with pytest.raises(ClusterError, match="WEFT_GAVEL_DIR .*nope: not a directory"):
        gavel.gavel_dir()
    monkeypatch.delenv("WEFT_GAVEL_DIR")
    (tmp_path / "repo" / "src").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "src")
    monkeypatch.setattr(gavel, "__file__", str(tmp_path / "site-packages" / "weft" / "cluster" / "gavel.py"))
    with pytest.raises(ClusterError, match="pass --gavel-dir DIR or set WEFT_GAVEL_DIR=DIR"):
        gavel.gavel_dir()
    (tmp_path / "shared" / "data" / "gavel").mkdir(parents=True)     # ../shared beside the checkout
    assert gavel.gavel_dir() == tmp_path / "shared" / "data" / "gavel"
    assert main(["cluster", "simulate", "--gavel-dir", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "--gavel-dir" in capsys.readouterr().err


def test_simulate_msr_trace_skip_unknown_prints_count_and_types(capsys, gavel_dir, tmp_path):
    msr = gavel_dir / "traces/msr/seed=0/2869ce.trace"
    rc = main(["cluster", "simulate", "--trace", str(msr), "--gavel-dir", str(gavel_dir)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "2869ce.trace:" in err and "column 1 (job_type)" in err and "--skip-unknown" in err
    # A prefix of the trace keeps the test fast.
    short = tmp_path / "msr.trace"
    short.write_text("\n".join(msr.read_text().splitlines()[:40]) + "\n")
    rc = main(["cluster", "simulate", "--trace", str(short), "--skip-unknown", "--gavel-dir", str(gavel_dir),
               "--policy", "fifo", "--semantics", "gavel", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "skipped 13 row(s) of 12 unknown (type, scale factor)" in err and "ResNet-50 (batch size 128) x32 (1)" in err
    assert "semantics gavel" in out


def test_skip_unknown_needs_a_trace(capsys, gavel_dir):  # skipped where the Gavel data is absent
    assert main(["cluster", "simulate", "--skip-unknown", "--jobs", "5"]) == 2
    assert "--skip-unknown" in capsys.readouterr().err


def test_lp_solver_needs_gavel_semantics(capsys, gavel_dir):
    assert main(["cluster", "simulate", "--lp-solver", "ecos", "--jobs", "5"]) == 2
    assert "--lp-solver ecos: only with --semantics gavel" in capsys.readouterr().err


def test_simulate_gavel_semantics_with_ecos(capsys, gavel_dir, tmp_path):
    pytest.importorskip("cvxpy")
    rc = main(["cluster", "simulate", "--jobs", "6", "--rate", "0", "--cluster", "2:2:2", "--semantics", "gavel",
               "--lp-solver", "ecos", "--policy", "max_min_fairness_agnostic", "--no-progress",
               "--gavel-dir", str(gavel_dir), "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    (row,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert row["policy"] == "max_min_fairness_agnostic" and row["avg_jct_hours"] > 0
    assert len(row["jct_seconds"]) == 6 and "semantics gavel" in out
