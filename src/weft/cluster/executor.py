"""Run real weft training jobs on local "accelerator slots" with the round-based scheduler.

The cluster spec's accelerator counts become slots; every round the policy's
allocation goes through the same ``RoundMechanism`` as the simulator. A job
holding a lease runs as ``python -m weft.cluster.job`` with ``scale_factor``
gloo ranks; a job that keeps its lease keeps running (lease extension); a job
that loses it is preempted at the round boundary (checkpoint, exit) and later
resumes from its checkpoint on whatever slots it gets next. Each step is padded
to ``1 / throughput[job type, slot type]`` seconds: on a CPU machine the speed
of an accelerator type is *emulated* from the throughput table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from weft.atomic import write_json
from weft.cluster.mechanism import RoundMechanism
from weft.cluster.model import ClusterError, Job
from weft.cluster.policies import get_policy
from weft.cluster.problem import build_problem
from weft.errors import LaunchError


class _Running:
    def __init__(self, proc, lease, log):
        self.proc, self.lease, self.log = proc, lease, log


def _job_dir(workdir: Path, job: Job) -> Path:
    return workdir / f"job{job.job_id}"


def _progress_file(st: Path, key: str = "step"):
    try:
        return json.loads(st.read_text())[key]
    except (FileNotFoundError, ValueError, KeyError):
        return 0.0 if key == "step" else False


def _progress(workdir: Path, job: Job) -> float:
    return float(_progress_file(_job_dir(workdir, job) / "status.json"))


def _write_status(path: Path, data: dict) -> None:
    write_json(path, data, indent=None)


def _wait_started(workdir: Path, jobs: list[Job], running: dict, timeout: float) -> None:
    """Block until each newly started job reports training has begun (or exits):
    round time counts time on the accelerators, not process start-up."""
    end = time.monotonic() + timeout
    for job in jobs:
        st = _job_dir(workdir, job) / "status.json"
        while not _progress_file(st, "running") and running[job.job_id].proc.poll() is None:
            if time.monotonic() > end:
                raise LaunchError(f"job {job.job_id} did not start within {timeout:.0f} s")
            time.sleep(0.05)


def _start(workdir: Path, job: Job, lease, table, types, seed: int) -> _Running:
    d = _job_dir(workdir, job)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stop").unlink(missing_ok=True)
    st = d / "status.json"
    if st.exists():   # keep the progress, drop the "running" mark of the last segment
        _write_status(st, {"step": _progress_file(st), "running": False})
    tput = float(table.row(job.key, types)[types.index(lease.accel_type)])
    cfg = {"workdir": str(d), "nprocs": job.scale_factor, "total_steps": int(job.total_steps),
           "step_seconds": 1.0 / tput, "seed": seed + job.job_id, "accel_type": lease.accel_type,
           "slots": list(lease.workers)}
    cfg_path = d / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    log = open(d / "log.txt", "a")
    env = dict(os.environ, WEFT_SLOTS=",".join(map(str, lease.workers)), WEFT_ACCEL_TYPE=lease.accel_type)
    proc = subprocess.Popen([sys.executable, "-m", "weft.cluster.job", str(cfg_path)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    return _Running(proc, lease, log)


def _finish_proc(job: Job, run: _Running, workdir: Path, timeout: float) -> bool:
    """Wait for the process; True when the job has completed all its steps."""
    try:
        rc = run.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        run.proc.wait()
        raise LaunchError(f"job {job.job_id} did not stop within {timeout:.0f} s after preemption") from None
    finally:
        run.log.close()
    d = _job_dir(workdir, job)
    if rc != 0:
        tail = (d / "log.txt").read_text()[-3000:]
        raise LaunchError(f"job {job.job_id} ({job.job_type}) exited with code {rc}:\n{tail}")
    return bool(json.loads((d / "result.json").read_text())["done"])


def run_jobs(jobs: list[Job], spec, policy: str = "max_min_fairness", workdir: str | Path = "runs/schedule",
             round_seconds: float | None = None, out: str | Path | None = None, verbose: bool = False,
             seed: int = 0, stop_timeout: float = 120.0, max_seconds: float = 3600.0) -> dict:
    """Run ``jobs`` to completion; returns JCTs, preemptions and the lease history."""
    cluster, table = spec.cluster, spec.table
    types = cluster.types
    pol = get_policy(policy)
    if pol.packed:
        raise ClusterError(f"policy {policy!r} uses space sharing, which the executor does not run; "
                            "use an unpacked policy")
    for job in jobs:
        if not table.has(job.key) or not (table.row(job.key, types) > 0).any():
            raise ClusterError(f"job {job.job_id}: type {job.job_type!r} (scale {job.scale_factor}) "
                                f"has no throughput on any of {types}")
    round_s = float(round_seconds or spec.round_seconds)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mech = RoundMechanism(cluster, round_s)
    pending = sorted(jobs, key=lambda j: j.arrival_time)
    by_id = {j.job_id: j for j in jobs}
    active: list[int] = []
    running: dict[int, _Running] = {}
    finish, history, preemptions, segments = {}, [], 0, {j.job_id: 0 for j in jobs}
    t0 = time.monotonic()
    dirty, units = True, []
    try:
        while len(finish) < len(jobs):
            now = time.monotonic() - t0
            if now > max_seconds:
                raise LaunchError(f"jobs did not finish within {max_seconds:.0f} s")
            while pending and pending[0].arrival_time <= now:
                active.append(pending.pop(0).job_id)
                dirty = True
            for m, run in list(running.items()):      # completions during the round
                if run.proc.poll() is not None:
                    del running[m]
                    if _finish_proc(by_id[m], run, workdir, stop_timeout):
                        finish[m] = time.monotonic() - t0
                        active.remove(m)
                        mech.forget(m)
                        dirty = True
            if not active:
                time.sleep(0.05)
                continue
            if dirty:
                ajobs = [by_id[m] for m in active]
                done = {m: _progress(workdir, by_id[m]) for m in active}
                prob = build_problem(ajobs, cluster, table, now, done)
                alloc = pol.solve(prob)
                units, A, scale, runnable = list(active), alloc.X, prob.scale, prob.T > 0
                dirty = False
            leases = mech.schedule_round(now, units, A, scale, runnable)
            stopping = [m for m, run in running.items()
                        if m not in leases or leases[m].workers != run.lease.workers]
            for m in stopping:                      # preempt at the round boundary
                (_job_dir(workdir, by_id[m]) / "stop").touch()
            for m in stopping:
                run = running.pop(m)
                preemptions += 1
                if _finish_proc(by_id[m], run, workdir, stop_timeout):
                    finish[m] = time.monotonic() - t0
            started = []
            for m, lease in leases.items():
                if m not in running and m not in finish:
                    running[m] = _start(workdir, by_id[m], lease, table, types, seed)
                    segments[m] += 1
                    started.append(by_id[m])
            _wait_started(workdir, started, running, stop_timeout)
            history.append({"t": round(now, 3), "leases": {str(m): [l.accel_type, list(l.workers)]
                                                         for m, l in leases.items()}})
            if verbose:
                print(f"[{now:7.1f} s] " + ", ".join(f"job{m}->{l.accel_type}{list(l.workers)}"
                                                    for m, l in leases.items()), flush=True)
            if any(m in finish for m in stopping):
                dirty = True
            end = time.monotonic() + round_s
            while time.monotonic() < end and not any(r.proc.poll() is not None for r in running.values()):
                if pending and pending[0].arrival_time <= time.monotonic() - t0:
                    break
                time.sleep(0.05)
            for m in [m for m in active if m in finish]:
                active.remove(m)
                mech.forget(m)
    finally:
        for m, run in running.items():
            (_job_dir(workdir, by_id[m]) / "stop").touch()
            try:
                run.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.proc.kill()
            run.log.close()
    result = {"policy": pol.name, "jct": {m: finish[m] - by_id[m].arrival_time for m in sorted(finish)},
              "preemptions": preemptions, "segments": segments, "rounds": len(history), "history": history,
              "note": "accelerator speed emulated by padding each step to 1/throughput seconds"}
    if out:
        write_json(out, result, indent=1)
    return result


def final_parameters(workdir: str | Path, job: Job) -> dict:
    from weft.parallel.checkpoint import load_checkpoint
    return load_checkpoint(_job_dir(Path(workdir), job) / "ckpt.pt")["model"]

