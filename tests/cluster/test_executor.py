"""The executor preempts and resumes real 2-rank training jobs with no lost step."""

import json

import pytest
import torch

from weft.cluster.executor import final_parameters, run_jobs
from weft.cluster.job import train_rank
from weft.cluster.spec import load_cluster, load_jobs
from weft.launch import launch


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_preempted_jobs_resume_with_no_lost_step(tmp_path):
    (tmp_path / "cluster.yaml").write_text(
        "accelerators:\n  fast: {count: 2, per_server: 2}\n"
        "throughputs:\n  mlp: {'2': {fast: 10.0}}\nround_seconds: 2\n")
    (tmp_path / "jobs.yaml").write_text(
        "jobs:\n  - {type: mlp, scale_factor: 2, steps: 24}\n  - {type: mlp, scale_factor: 2, steps: 24}\n")
    spec = load_cluster(tmp_path / "cluster.yaml")
    jobs = load_jobs(tmp_path / "jobs.yaml", spec.table)
    res = run_jobs(jobs, spec, "max_min_fairness", workdir=tmp_path / "run", out=tmp_path / "res.json",
                   stop_timeout=400)
    assert set(res["jct"]) == {0, 1}
    assert res["preemptions"] >= 1
    assert max(res["segments"].values()) >= 2          # some job was resumed from a checkpoint
    for h in res["history"]:                            # never more than 2 slots in use
        assert sum(len(w) for _, w in h["leases"].values()) <= 2
    assert json.loads((tmp_path / "res.json").read_text())["preemptions"] == res["preemptions"]
    for job in jobs:
        ref_dir = tmp_path / f"ref{job.job_id}"
        ref_dir.mkdir()
        cfg = {"workdir": str(ref_dir), "nprocs": 2, "total_steps": 24, "seed": job.job_id}
        out = launch(train_rank, 2, args=(cfg,), timeout=60)
        assert out[0]["start_step"] == 0 and out[0]["step"] == 24
        ref = torch.load(ref_dir / "ckpt.pt", weights_only=False)
        got = final_parameters(tmp_path / "run", job)
        assert ref["step"] == 24
        for name, tensor in ref["model"].items():
            assert torch.equal(got[name], tensor), name
