"""The executor runs packed (space-sharing) policies: two jobs share one slot when their
combined memory peak fits it, never otherwise, and end where uninterrupted runs end."""

import json
import time

import pytest

from tests.cluster.test_executor import COMMAND, _uninterrupted_command
from weft.cli import main
from weft.cluster.colocation import CoLocation
from weft.cluster.contract import JobEnv
from weft.cluster.executor import job_dir, run_jobs
from weft.cluster.model import ClusterError
from weft.cluster.spec import load_cluster, load_jobs

# Each job type alone: 20 steps/s; sharing the slot: 16 steps/s each (a Gavel-format table).
THROUGHPUTS = {"x": {"a": {"null": 20.0, "b": [16.0, 16.0]}, "b": {"null": 20.0, "a": [16.0, 16.0]}}}
# Peak 8 for the first quarter of a step, 2 after, on a slot of 10: with the best offset the
# pair peaks at 10 (fits), launched together at 16 (does not).
PROFILES = {"format": "weft.colocation/1", "memory": {"x": 10},
            "profiles": {"a": {"bins": [8, 2, 2, 2]}, "b": {"bins": [8, 2, 2, 2]}}}


def _setup(tmp_path, throughputs=THROUGHPUTS, round_seconds=1, steps=(15, 60)):
    """Writes the table, the profiles, the cluster (one x slot) and jobs a and b (by default
    a is short, b long: b runs beside a, then alone, restarted at its solo step time)."""
    (tmp_path / "tp.json").write_text(json.dumps(throughputs))
    (tmp_path / "co.json").write_text(json.dumps(PROFILES))
    (tmp_path / "cluster.yaml").write_text(
        f"accelerators: {{x: 1}}\nthroughputs: tp.json\nround_seconds: {round_seconds}\n")
    (tmp_path / "jobs.yaml").write_text(json.dumps({"jobs": [
        {"type": t, "steps": n, "command": COMMAND} for t, n in zip("ab", steps)]}))
    spec = load_cluster(tmp_path / "cluster.yaml")
    return spec, load_jobs(tmp_path / "jobs.yaml", spec.table)


def _same_slot_rounds(res) -> list[dict]:
    return [h for h in res["history"] if {"0", "1"} <= set(h["leases"])
            and h["leases"]["0"] == h["leases"]["1"]]


def _check_results(tmp_path, run, jobs):
    for job in jobs:
        got = json.loads((job_dir(run, job) / "ckpt.pt").read_text())
        assert got == _uninterrupted_command(tmp_path, job, seed=job.job_id)


def test_pair_that_fits_shares_the_slot(tmp_path):
    spec, jobs = _setup(tmp_path)
    co = CoLocation.load(tmp_path / "co.json", rule="offset")
    assert co.fits(jobs[0].key, jobs[1].key, spec.table, "x")
    run = tmp_path / "run"
    res = run_jobs(jobs, spec, "max_min_fairness_packed", workdir=run, stop_timeout=60, colocation=co)
    assert set(res["jct"]) == {0, 1}
    together = _same_slot_rounds(res)
    assert together and together[0] is res["history"][0], res["history"]   # paired from round 0
    assert all(h["pairs"] == [[0, 1]] for h in together)
    assert together[0]["leases"]["0"] == ["x", [0]]
    starts = res["colocation"]["shared_starts"]          # both processes ran at once on slot 0
    assert starts and {starts[0]["job"], *starts[0]["beside"]} == {0, 1} and starts[0]["workers"] == [0]
    # a (15 steps at 16/s) ends within a second of the start; b (60 steps) then runs alone,
    # restarted from its checkpoint to be told its solo step time: no step lost.
    segs = [int(s) for s in (job_dir(run, jobs[1]) / "segments.txt").read_text().split()]
    assert segs[0] == 0 and len(segs) >= 2 and 0 < segs[-1] < 60
    _check_results(tmp_path, run, jobs)


def test_pair_that_does_not_fit_never_shares(tmp_path):
    spec, jobs = _setup(tmp_path)
    co = CoLocation.load(tmp_path / "co.json", rule="gang")
    assert not co.fits(jobs[0].key, jobs[1].key, spec.table, "x")
    run = tmp_path / "run"
    res = run_jobs(jobs, spec, "max_min_fairness_packed", workdir=run, stop_timeout=60, colocation=co)
    assert set(res["jct"]) == {0, 1}
    assert _same_slot_rounds(res) == [] and not any("pairs" in h for h in res["history"])
    assert res["colocation"]["shared_starts"] == []
    _check_results(tmp_path, run, jobs)


def test_packed_policy_needs_profiles_and_profiles_need_a_packed_policy(tmp_path, capsys):
    spec, jobs = _setup(tmp_path)
    with pytest.raises(ClusterError, match="memory profiles"):
        run_jobs(jobs, spec, "max_min_fairness_packed", workdir=tmp_path / "run")
    argv = ["cluster", "run", str(tmp_path / "cluster.yaml"), str(tmp_path / "jobs.yaml"),
            "--workdir", str(tmp_path / "w"), "--colocation", str(tmp_path / "co.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("weft: error:") and "needs a packed policy" in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "run").exists()


def _starts(run, job) -> list[float]:
    return [float(line.split()[1]) for line in (job_dir(run, job) / "steps.txt").read_text().splitlines()]


def test_a_pair_steps_in_tick_tock_at_its_planned_offset(tmp_path):
    # Paired, a steps at 9/s and b at 6/s: both must step on b's period (1/6 s), b a quarter
    # period after a (the profiles' best offset: peak 8 over the first quarter of a step).
    tp = {"x": {"a": {"null": 10.0, "b": [9.0, 6.0]}, "b": {"null": 10.0, "a": [6.0, 9.0]}}}
    period = 1 / 6   # (the LP leases the pair only part of the time: one 5 s round holds both runs)
    spec, jobs = _setup(tmp_path, throughputs=tp, round_seconds=5, steps=(10, 10))
    co = CoLocation.load(tmp_path / "co.json", rule="offset")
    assert co.launch_offset(jobs[0].key, jobs[1].key, spec.table, "x") == 0.25
    assert CoLocation.load(tmp_path / "co.json", rule="gang").launch_offset(
        jobs[0].key, jobs[1].key, spec.table, "x") == 0.0
    run = tmp_path / "run"
    res = run_jobs(jobs, spec, "max_min_fairness_packed", workdir=run, stop_timeout=60, colocation=co)
    assert set(res["jct"]) == {0, 1} and res["preemptions"] == 0, res["history"]
    phased = {p["job"]: p for p in res["colocation"]["phased_starts"]}
    assert set(phased) == {0, 1}, res["history"]
    first, second = phased[0]["unit"]
    assert phased[first]["offset_s"] == 0.0 and phased[second]["offset_s"] == 0.25 * period
    assert phased[0]["period_s"] == phased[1]["period_s"] == period
    epoch = res["colocation"]["epoch"]
    for m in (0, 1):
        starts = _starts(run, jobs[m])
        assert len(starts) == 10
        off = phased[m]["offset_s"]
        # how far each step started from its grid time (circular, in seconds)
        err = sorted(abs((t - epoch - off + period / 2) % period - period / 2) for t in starts)
        assert err[len(err) // 2] < 0.02, (m, err)
        gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
        assert 0.9 * period < gaps[len(gaps) // 2] < 1.2 * period, (m, gaps)   # the faster job waits too
    _check_results(tmp_path, run, jobs)


def test_the_phase_travels_in_the_environment_and_paces_steps_on_its_grid(tmp_path):
    epoch = time.time() - 100.0
    env = JobEnv(tmp_path, 5, phase=(epoch, 0.03, 0.1))
    back = JobEnv.from_env(env.variables())
    assert back == env and JobEnv.from_env(JobEnv(tmp_path, 5).variables()).phase == ()
    assert env.next_step_at(epoch + 0.03) == epoch + 0.03
    assert abs(env.next_step_at(epoch + 5.031) - (epoch + 5.13)) < 1e-6   # float time stamps: ulp 2e-7
    for _ in range(3):
        env.pace(None)
        t = time.time()
        assert abs((t - epoch - 0.03 + 0.05) % 0.1 - 0.05) < 0.02
    with pytest.raises(ClusterError, match="WEFT_STEP_PHASE"):
        JobEnv.from_env({**env.variables(), "WEFT_STEP_PHASE": "1.0,0.5"})
    with pytest.raises(ClusterError, match="WEFT_STEP_PHASE"):
        JobEnv.from_env({**env.variables(), "WEFT_STEP_PHASE": "1.0,0.5,0"})
