"""Run real jobs on local "accelerator slots" with the round-based scheduler.

The cluster spec's accelerator counts become slots. Rounds begin on a fixed
wall-clock grid, every ``round_seconds`` from the start: at each, arrivals are
admitted, the policy is re-solved if the set of jobs changed, and the same
``RoundMechanism`` as the simulator turns the allocation into leases. A running
job that keeps its lease keeps running (lease extension); one that loses it is
asked to stop, checkpoints and exits, and its slots are free once it has. A
leased job starts as soon as its slots are free. Nothing in the loop waits for
a process to start or to stop, so rounds keep to the grid and a free slot is
never held up by another job's start-up. One departure from a pure round
mechanism keeps start-up from eating the leases: a job is asked to stop only
once it has trained for a full round since its start-up ended (its first
report), so the job meant to follow it may wait past the boundary. Rounds
should still be well above a job's start-up time (Gavel's physical cluster
uses 6 minutes).

Every job is a model spec or a command (``tasks.py``) run under one contract
(``contract.py``, ``process.py``). Each job's speed is emulated: its process is
told to pad a step to ``1 / throughput[job type, slot type]`` seconds.
Everything is validated before the first process starts: the policy, that each
job fits some accelerator type, and that each task can be loaded.

Packed (space-sharing) policies run with memory profiles (``CoLocation``): the
policy sees only the pairs whose combined memory peak fits (``CoLocation.table``,
as in the simulator), and the two jobs of a leased pair run at once on the same
slots, each at its side's pair throughput, in tick-tock: both step on the pair's common
period, the second at the launch offset its memory fit was planned with (``seats.py``,
``JobEnv.pace``). A job whose step time or phase changes (a partner joins or leaves) is
stopped and restarted from its checkpoint like a preempted one, so that its process is
told the new ones.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from weft.atomic import write_json
from weft.cluster.contract import JobEnv
from weft.cluster.mechanism import RoundMechanism
from weft.cluster.model import ClusterError, Job
from weft.cluster.policies import get_policy
from weft.cluster.problem import build_problem, check_runnable
from weft.cluster.process import JobProcess
from weft.cluster.seats import Seat, fitting, may_start, phased, seats
from weft.cluster.simulator import schedulable_units
from weft.cluster.tasks import ModelTask
from weft.errors import LaunchError


def job_dir(workdir: str | Path, job: Job) -> Path:
    return Path(workdir) / f"job{job.job_id}"


def _env(workdir: Path, job: Job, seed: int, seat: Seat | None = None, epoch: float = 0.0) -> JobEnv:
    if seat is None:
        return JobEnv(job_dir(workdir, job), int(job.total_steps))
    return JobEnv(job_dir(workdir, job), int(job.total_steps), job.scale_factor, seed + job.job_id,
                  seat.step_seconds, seat.lease.workers, seat.lease.accel_type, _phase(seat, epoch))


def _phase(seat: Seat, epoch: float) -> tuple[float, ...]:
    return (epoch, *seat.phase) if seat.phase else ()


def check_jobs(jobs: list[Job], spec, policy: str, workdir: Path | None = None, colocation=None) -> None:
    """Everything that can be checked before a process starts; a ClusterError names what is wrong."""
    packed = get_policy(policy).packed
    if packed and colocation is None:
        raise ClusterError(f"policy {policy!r} shares accelerators: give the jobs' memory profiles "
                           "(--colocation PROFILES, docs/wavelet.md) so that only pairs that fit share one")
    if colocation is not None and not packed:
        raise ClusterError(f"--colocation: needs a packed policy (max_min_fairness_packed or "
                           f"min_makespan_packed), not {policy!r}")
    check_runnable(jobs, spec.cluster, spec.table)
    for job in jobs:
        if job.task is None:
            job.task = ModelTask(where=f"job {job.job_id}")
        job.task.check()
        if workdir is not None and _env(workdir, job, 0).status_file.exists():
            raise ClusterError(f"{job_dir(workdir, job)} holds a job of an earlier run; use an empty workdir")


def run_jobs(jobs: list[Job], spec, policy: str = "max_min_fairness", workdir: str | Path = "runs/cluster",
             round_seconds: float | None = None, out: str | Path | None = None, verbose: bool = False,
             seed: int = 0, stop_timeout: float = 120.0, max_seconds: float = 3600.0,
             colocation=None) -> dict:
    """Run ``jobs`` to completion; returns JCTs, preemptions, the lease history and, with a
    packed policy and ``colocation`` (a `CoLocation`), the jobs that shared slots."""
    cluster, table = spec.cluster, spec.table
    types = cluster.types
    workdir = Path(workdir).resolve()      # commands run in their own folder
    check_jobs(jobs, spec, policy, workdir, colocation)
    pol = get_policy(policy)
    if pol.packed:
        table = colocation.table(table)     # pairs only where their combined peak fits
    round_s = float(round_seconds or spec.round_seconds)
    if not 0 < round_s < float("inf"):
        raise ClusterError(f"round_seconds must be a positive number, got {round_s}")
    workdir.mkdir(parents=True, exist_ok=True)
    mech = RoundMechanism(cluster, round_s, type_blind=not pol.aware)
    pending = sorted(jobs, key=lambda j: j.arrival_time)
    by_id = {j.job_id: j for j in jobs}
    active: list[int] = []
    procs: dict[int, JobProcess] = {}
    where: dict[int, Seat] = {}
    finish, history, preemptions, segments = {}, [], 0, {j.job_id: 0 for j in jobs}
    shared = []                                     # co-located starts: who joined whom where
    phases = []                                     # starts on a pair's tick-tock grid
    dirty, next_round, preempt, units, rates = True, 0.0, set(), [], []
    t0 = time.monotonic()
    epoch = time.time()                             # the wall-clock grid co-located pairs step on
    try:
        while len(finish) < len(jobs):
            now = time.monotonic() - t0
            if now > max_seconds:
                raise LaunchError(f"jobs did not finish within {max_seconds:.0f} s")
            for m, p in list(procs.items()):
                if p.exited():
                    del procs[m]
                    if p.finished():
                        finish[m] = now
                        active.remove(m)
                        mech.forget(m)
                        dirty = True
                    continue
                trained = p.trained()
                if p.stop_sent:
                    if time.monotonic() - p.stop_time > stop_timeout:
                        raise LaunchError(f"job {m} did not stop within {stop_timeout:.0f} s of being asked")
                elif p.started_at is None:
                    if time.monotonic() - p.start_time > stop_timeout:
                        raise LaunchError(f"job {m} did not report its start within {stop_timeout:.0f} s "
                                          f"(see {p.env.job_dir / 'log.txt'})")
                elif p in preempt and trained >= round_s:
                    p.request_stop()                 # lost its lease and has had a round of training
                    preemptions += 1
            if now >= next_round:
                start = math.floor(now / round_s) * round_s
                next_round = start + round_s
                while pending and pending[0].arrival_time <= now:
                    active.append(pending.pop(0).job_id)
                    dirty = True
                if dirty and active:
                    done = {m: _env(workdir, by_id[m], seed).progress() for m in active}
                    prob = build_problem([by_id[m] for m in active], cluster, table, start, done,
                                         with_pairs=pol.packed)
                    units, A, scale, runnable, rates = schedulable_units(active, prob, pol.solve(prob))
                    A = fitting(units, A, by_id, table, colocation, types)
                    dirty = False
                holding = {m: p.lease for m, p in procs.items() if not p.stop_sent}
                leases = mech.schedule_round(start, units, A, scale, runnable, holding) if active else {}
                where = seats(leases, units, rates, types)
                if pol.packed:
                    where = phased(where, by_id, table, colocation)
                preempt = {p for m, p in procs.items() if m not in where or where[m].lease.workers != p.workers
                           or where[m].step_seconds != p.env.step_seconds
                           or _phase(where[m], epoch) != p.env.phase}
                if active:
                    history.append({"t": start, "at": round(now, 3), "leases": {
                        str(m): [s.lease.accel_type, list(s.lease.workers)] for m, s in where.items()}})
                    pairs = [list(u) for u in leases if isinstance(u, tuple)]
                    if pairs:
                        history[-1]["pairs"] = pairs
                if verbose and active:
                    print(f"[{start:7.1f} s] " + ", ".join(
                        f"job{'+job'.join(map(str, mech.members(u)))}->{lease.accel_type}{list(lease.workers)}"
                        for u, lease in leases.items()), flush=True)
            occupants: dict[int, set[int]] = {}
            for m, p in procs.items():
                for w in p.workers:
                    occupants.setdefault(w, set()).add(m)
            for m, seat in where.items():          # start leased jobs as soon as their slots allow
                if m in procs or m in finish or not may_start(m, seat, occupants):
                    continue
                proc = JobProcess(by_id[m], _env(workdir, by_id[m], seed, seat, epoch), seat.lease)
                proc.start()
                procs[m] = proc
                segments[m] += 1
                beside = sorted({o for w in seat.lease.workers for o in occupants.get(w, ())})
                if beside:
                    shared.append({"t": round(time.monotonic() - t0, 3), "job": m, "beside": beside,
                                   "accel_type": seat.lease.accel_type, "workers": list(seat.lease.workers)})
                if seat.phase:
                    phases.append({"t": round(time.monotonic() - t0, 3), "job": m, "unit": list(seat.unit),
                                   "offset_s": seat.phase[0], "period_s": seat.phase[1]})
                for w in seat.lease.workers:
                    occupants.setdefault(w, set()).add(m)
            time.sleep(max(0.0, min(0.05, next_round - (time.monotonic() - t0))))
    finally:                                        # on an error or Ctrl-C: stop every job
        for p in procs.values():
            if not p.exited():
                p.request_stop()
        for p in procs.values():
            p.kill()
    result = {"policy": pol.name, "round_seconds": round_s,
              "jct": {m: finish[m] - by_id[m].arrival_time for m in sorted(finish)},
              "preemptions": preemptions, "segments": segments, "rounds": len(history), "history": history,
              "note": "accelerator speed emulated by padding each step to 1/throughput seconds"}
    if pol.packed:
        result["colocation"] = {"rule": colocation.rule, "shared_starts": shared, "phased_starts": phases,
                                "epoch": epoch}
    if out:
        write_json(out, result, indent=1)
    return result
