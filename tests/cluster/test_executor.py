"""The executor runs model-spec and command jobs, preempts and resumes them with no lost step,
keeps rounds on the grid, and rejects what could never run before anything starts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weft.cli import main
from weft.cluster.contract import JobEnv
from weft.cluster.executor import job_dir, run_jobs
from weft.cluster.model import ClusterError
from weft.cluster.model_job import final_parameters, train_rank
from weft.cluster.spec import load_cluster, load_jobs
from weft.launch import launch

HERE = Path(__file__).resolve().parent
COMMAND = [sys.executable, str(HERE / "_command_job.py")]
USER_MODEL = HERE / "_user_model.py"


def _specs(tmp_path, cluster: str, jobs: list[dict]):
    (tmp_path / "cluster.yaml").write_text(cluster)
    (tmp_path / "jobs.yaml").write_text(json.dumps({"jobs": jobs}))
    spec = load_cluster(tmp_path / "cluster.yaml")
    return spec, load_jobs(tmp_path / "jobs.yaml", spec.table)


def _segments(workdir, job) -> list[int]:
    return [int(s) for s in (job_dir(workdir, job) / "segments.txt").read_text().split()]


def _uninterrupted_command(tmp_path, job, seed: int) -> dict:
    env = JobEnv(tmp_path / f"ref{job.job_id}", int(job.total_steps), seed=seed)
    env.job_dir.mkdir()
    subprocess.run(COMMAND, env={**os.environ, **env.variables()}, check=True, timeout=120)
    return json.loads(env.checkpoint.read_text())


def test_command_jobs_are_preempted_and_resumed_exactly(tmp_path):
    spec, jobs = _specs(tmp_path, "accelerators: {x: 1}\nthroughputs: {sim: {x: 40.0}}\nround_seconds: 1\n",
                        [{"type": "sim", "steps": 90, "command": COMMAND}] * 2)
    res = run_jobs(jobs, spec, workdir=tmp_path / "run", stop_timeout=300)
    assert set(res["jct"]) == {0, 1} and res["preemptions"] >= 1
    for job in jobs:
        segs = _segments(tmp_path / "run", job)
        assert segs[0] == 0 and len(segs) == res["segments"][job.job_id]
        got = json.loads((job_dir(tmp_path / "run", job) / "ckpt.pt").read_text())
        assert got == _uninterrupted_command(tmp_path, job, seed=job.job_id)
    assert max(res["segments"].values()) >= 2          # some job resumed from its checkpoint
    for h in res["history"]:                           # one slot: never two leases
        assert len(h["leases"]) <= 1
    ts = [h["t"] for h in res["history"]]                # rounds on the grid: whole seconds
    assert ts == sorted(set(ts)) and all(t == int(t) for t in ts)


def test_a_free_slot_is_used_while_another_job_starts(tmp_path):
    # Job 0's start-up waits until job 1 (arriving later, with a slot free) has started.
    # The old executor blocked on job 0's start-up before admitting anyone: a deadlock
    # until its start timeout.
    run = tmp_path / "run"
    spec, jobs = _specs(tmp_path, "accelerators: {x: 2}\nthroughputs: {sim: {x: 50.0}}\nround_seconds: 1\n", [
        {"type": "sim", "steps": 10, "command": COMMAND + ["--wait-for-start", str(run / "job1")]},
        {"type": "sim", "steps": 10, "arrival": 0.5, "command": COMMAND}])
    res = run_jobs(jobs, spec, workdir=run, stop_timeout=60)
    assert set(res["jct"]) == {0, 1} and res["preemptions"] == 0


def test_rounds_go_on_while_a_job_starts(tmp_path):
    # Job 0 (on type a) starts only once job 2 has started; jobs 1 and 2 share the one
    # b slot and job 2 arrives later, so it runs only from a later round on. The old executor held the round
    # clock until job 0 had started: a deadlock.
    run = tmp_path / "run"
    spec, jobs = _specs(
        tmp_path, "accelerators: {a: 1, b: 1}\nthroughputs: {sa: {a: 50.0}, sb: {b: 50.0}}\nround_seconds: 1\n", [
            {"type": "sa", "steps": 5, "command": COMMAND + ["--wait-for-start", str(run / "job2")]},
            {"type": "sb", "steps": 100, "command": COMMAND},
            {"type": "sb", "steps": 100, "arrival": 0.5, "command": COMMAND}])
    res = run_jobs(jobs, spec, workdir=run, stop_timeout=60)
    assert set(res["jct"]) == {0, 1, 2} and res["preemptions"] >= 1
    first = {m: min(i for i, h in enumerate(res["history"]) if str(m) in h["leases"]) for m in (0, 1, 2)}
    assert first[0] == first[1] == 0 < first[2]


def test_a_job_that_cannot_fit_is_rejected_before_anything_starts(tmp_path, capsys):
    # Issue 14: `run` used to run empty rounds until its 3600 s limit.
    (tmp_path / "c.yaml").write_text("accelerators: {fast: 2}\nthroughputs: {mlp: {'4': {fast: 10}}}\n")
    (tmp_path / "j.yaml").write_text(f"jobs:\n  - {{type: mlp, scale_factor: 4, steps: 5, model: {USER_MODEL}}}\n")
    rc = main(["cluster", "run", str(tmp_path / "c.yaml"), str(tmp_path / "j.yaml"), "--workdir", str(tmp_path / "w")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "jobs[0]: scale_factor 4: needs 4 accelerators at once" in err and "at most 2" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_user_model_job_is_preempted_and_resumed_with_no_lost_step(tmp_path):
    # The model is defined in a file weft does not ship (tests/cluster/_user_model.py: dropout,
    # Adam, MSE, its own dataset). It shares 2 slots with a command job, so it must give
    # them up at least once and resume on 2 ranks from its checkpoint.
    # Why this holds on any machine speed: the two jobs have equal fair shares, so leases
    # alternate round by round (2 s each) whoever is running. The executor stops a job that
    # has lost its lease once it has trained one round since its start-up, so one segment
    # trains at most two rounds (4 s) whenever its start-up ends; steps are padded to at
    # least 0.1 s, so 60 steps need at least 6 s and cannot fit in one segment. (With 30
    # steps, a start-up that ended just after a round boundary let it finish in one.)
    spec, jobs = _specs(tmp_path, "accelerators: {fast: {count: 2, per_server: 2}}\n"
                        "throughputs: {mlp: {'2': {fast: 10.0}}, sim: {'2': {fast: 10.0}}}\nround_seconds: 2\n", [
                            {"type": "mlp", "scale_factor": 2, "steps": 60, "model": str(USER_MODEL), "batch": 8},
                            {"type": "sim", "scale_factor": 2, "steps": 80, "command": COMMAND}])
    res = run_jobs(jobs, spec, workdir=tmp_path / "run", stop_timeout=600)
    assert set(res["jct"]) == {0, 1}
    assert res["segments"][0] >= 2, res["history"]      # resumed from its checkpoint
    for h in res["history"]:
        assert sum(len(w) for _, w in h["leases"].values()) <= 2
    ref = JobEnv(tmp_path / "ref", 60, nprocs=2, seed=0)
    ref.job_dir.mkdir()
    out = launch(train_rank, 2, args=(ref, str(USER_MODEL), None, 8, 0.05), timeout=120)
    assert out[0]["start_step"] == 0 and out[0]["step"] == 60
    want, got = final_parameters(ref.job_dir), final_parameters(job_dir(tmp_path / "run", jobs[0]))
    assert torch.load(job_dir(tmp_path / "run", jobs[0]) / "ckpt.pt", weights_only=False)["step"] == 60
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


def test_bad_tasks_are_rejected_before_anything_starts(tmp_path):
    cluster = "accelerators: {x: 1}\nthroughputs: {sim: {x: 10.0}}\n"
    (tmp_path / "nodata.py").write_text("import torch\nmodel = torch.nn.Linear(2, 1)\n")
    cases = [
        ({"model": "nodata.py"}, "no function 'dataset'"),
        ({"model": "missing.py"}, "does not exist"),
        ({"model": "nodata.py:nope"}, "has no attribute 'nope'"),
        ({"command": ["no-such-program-weft"]}, "program 'no-such-program-weft' not found"),
        ({"command": COMMAND + ["{bogus}"]}, "bad placeholder"),
    ]
    for extra, match in cases:
        spec, jobs = _specs(tmp_path, cluster, [{"type": "sim", "steps": 5, **extra}])
        with pytest.raises(ClusterError, match=match) as info:
            run_jobs(jobs, spec, workdir=tmp_path / "run")
        assert "jobs[0]" in str(info.value)
        assert not (tmp_path / "run").exists()
