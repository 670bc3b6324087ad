"""Event-driven, round-based cluster simulator.

Jobs arrive (from a trace or the generator); every round (default 360 s) the
mechanism turns the policy's allocation into leases and each leased job
advances ``throughput x round`` steps. The policy is re-solved only when the
set of active jobs changes (an arrival or a completion), as Gavel does. With
``measure=(lo, hi)`` the run stops once jobs lo..hi-1 have all finished and
average JCT is taken over them (a steady-state window). Like Gavel, which
keeps generating arrivals until the window's jobs are done, a steady-state run
should be given jobs arriving after the window too; ``extra["arrivals_ran_out"]``
is True when the last job arrived before the window finished (the tail of the
window then ran on an emptying cluster, which flatters an overloaded policy).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from weft.cluster.mechanism import RoundMechanism
from weft.cluster.model import Cluster, ClusterError, Job
from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.problem import build_problem, check_runnable
from weft.cluster.throughputs import ThroughputTable


@dataclass
class SimResult:
    policy: str
    jct: dict[int, float]                 # job id -> seconds from arrival to completion
    window: list[int]                     # job ids the averages are taken over
    makespan: float
    utilization: float
    ftf: dict[int, float]                 # job id -> finish-time fairness ratio rho
    rounds: int
    solves: int
    solve_seconds: float
    wall_seconds: float
    preemptions: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def avg_jct(self) -> float:
        return float(np.mean([self.jct[i] for i in self.window]))

    def summary(self) -> dict:
        rho = [self.ftf[i] for i in self.window]
        return {"policy": self.policy, "avg_jct_hours": self.avg_jct / 3600, "makespan_hours": self.makespan / 3600,
                "utilization": self.utilization, "ftf_mean": float(np.mean(rho)), "ftf_max": float(np.max(rho)),
                "jobs_measured": len(self.window), "jobs_completed": len(self.jct), "rounds": self.rounds,
                "solves": self.solves, "solve_seconds": self.solve_seconds, "wall_seconds": self.wall_seconds,
                "preemptions": self.preemptions,
                **{k: self.extra[k] for k in ("colocation", "shared_leases") if k in self.extra}}


SEMANTICS = ("weft", "gavel")


def simulate(jobs: list[Job], cluster: Cluster, table: ThroughputTable, policy: SchedulingPolicy,
             round_seconds: float = 360.0, measure: tuple[int, int] | None = None,
             progress: bool = False, max_partners: int = 4, resolve_every: float | None = None,
             semantics: str = "weft", seed: int = 0, ablate=(), lp_solver: str = "center") -> SimResult:
    """``resolve_every`` > 0 re-solves at most that often (Gavel's simulator
    waits 1920 s between allocation resets); until then, new jobs have no
    allocation and wait, and finished jobs are dropped from the old one.
    Default: 0 (on every change) for weft's semantics, 1920 s for Gavel's.

    ``semantics="gavel"`` runs Gavel's own simulator loop (``gavel_sim``: round
    ends, integer steps, re-solve cadence, type shuffle, FIFO's zero-priority
    skip, Gavel's flavour of each policy); ``seed`` seeds its random draws.
    weft's semantics also use ``seed`` for the agnostic policies' type order.
    ``ablate`` (gavel semantics only) leaves out named behaviours of Gavel
    (``gavel_sim.ABLATIONS``) to measure their effect. ``lp_solver`` (gavel
    semantics only): ``"center"`` (weft's central-point solver, default) or
    ``"ecos"`` (Gavel's LAS LPs through cvxpy + ECOS; needs ``weft[gavel]``)."""
    if semantics not in SEMANTICS:
        raise ClusterError(f"semantics {semantics!r}: choose from {', '.join(SEMANTICS)}")
    if semantics == "gavel":
        from weft.cluster.gavel_sim import RESET_SECONDS, simulate_gavel
        return simulate_gavel(jobs, cluster, table, policy, round_seconds, measure, seed,
                              RESET_SECONDS if resolve_every is None else resolve_every, ablate, lp_solver)
    if lp_solver != "center":
        raise ClusterError(f"lp_solver {lp_solver!r}: only with semantics='gavel'")
    resolve_every = resolve_every or 0.0
    types = cluster.types
    check_runnable(jobs, cluster, table)
    order = sorted(range(len(jobs)), key=lambda i: jobs[i].arrival_time)
    window_idx = range(*measure) if measure else range(len(jobs))
    if measure and not (0 <= measure[0] < measure[1] <= len(jobs)):
        raise ClusterError(f"measure window {measure} is outside the {len(jobs)} jobs")
    targets = {jobs[i].job_id for i in window_idx}
    by_id = {j.job_id: j for j in jobs}
    mech = RoundMechanism(cluster, round_seconds, type_blind=not getattr(policy, "aware", True), seed=seed)
    done: dict[int, float] = {}
    finish: dict[int, float] = {}
    active: list[int] = []
    occupancy: dict[int, float] = {}          # sum over rounds of #active jobs (for FTF)
    rounds_in: dict[int, int] = {}
    t, nxt, solves, solve_s, busy, rounds, preempt = 0.0, 0, 0, 0.0, 0.0, 0, 0
    dirty, units, last_units = True, [], set()
    ran_out = None                            # time the last job arrived with the window unfinished
    last_solve = None
    shared: dict[tuple[str, str, str], int] = {}  # (job type, job type, accel type) -> leases
    start = time.perf_counter()
    bar = _Bar(len(targets), policy.name) if progress else None
    total_acc = sum(cluster.counts.values())
    while targets - finish.keys():
        while nxt < len(order) and jobs[order[nxt]].arrival_time <= t:
            active.append(jobs[order[nxt]].job_id)
            nxt += 1
            dirty = True
        if nxt >= len(order) and ran_out is None:
            ran_out = t
        if not active:
            if nxt >= len(order):
                break
            t = max(t, np.ceil(jobs[order[nxt]].arrival_time / round_seconds) * round_seconds)
            continue
        if dirty and (last_solve is None or t - last_solve >= resolve_every):
            last_solve = t
            ajobs = [by_id[i] for i in active]
            prob = build_problem(ajobs, cluster, table, t, done, with_pairs=policy.packed, max_partners=max_partners)
            s0 = time.perf_counter()
            alloc = policy.solve(prob)
            solve_s += time.perf_counter() - s0
            solves += 1
            units, A, scale, runnable, rates = schedulable_units(active, prob, alloc)
            uidx = {u: i for i, u in enumerate(units)}
            dirty = False
        leases = mech.schedule_round(t, units, A, scale, runnable)
        ran = set()
        for u, lease in leases.items():
            i = uidx[u]
            j = types.index(lease.accel_type)
            if isinstance(u, tuple):  # a space-shared pair: which job types on which accelerator
                kind = (by_id[u[0]].key[0], by_id[u[1]].key[0], lease.accel_type)
                shared[kind] = shared.get(kind, 0) + 1
            longest = 0.0
            for side, m in enumerate(RoundMechanism.members(u)):
                rate = rates[i][j, side]
                left = by_id[m].total_steps - done.get(m, 0.0)
                run = min(round_seconds, left / rate) if rate > 0 else round_seconds
                done[m] = done.get(m, 0.0) + rate * run
                ran.add(m)
                if rate > 0 and left / rate <= round_seconds + 1e-9:
                    finish[m] = t + left / rate
                    done[m] = by_id[m].total_steps
                longest = max(longest, run)
            busy += longest * len(lease.workers)
        preempt += len(last_units - ran - finish.keys())
        last_units = ran
        for m in active:
            occupancy[m] = occupancy.get(m, 0.0) + len(active)
            rounds_in[m] = rounds_in.get(m, 0) + 1
        ended = [m for m in active if m in finish]
        if ended:
            active = [m for m in active if m not in finish]
            units, A, scale, runnable, rates = _drop_finished(units, A, scale, runnable, rates, finish)
            uidx = {u: i for i, u in enumerate(units)}
            for m in ended:
                mech.forget(m)
                if bar and m in targets:
                    bar.advance()
            dirty = True
        t += round_seconds
        rounds += 1
    if bar:
        bar.close()
    jct = {m: finish[m] - by_id[m].arrival_time for m in finish}
    makespan = max(finish.values()) - min(j.arrival_time for j in jobs) if finish else 0.0
    ftf = finish_time_fairness(jct, by_id, table, cluster, occupancy, rounds_in)
    return SimResult(policy.name, jct, sorted(targets), makespan, busy / (total_acc * max(t, 1e-9)),
                     ftf, rounds, solves, solve_s, time.perf_counter() - start, preempt,
                     extra={"arrivals_ran_out": measure is not None and ran_out is not None,
                            "shared_leases": [[*k, n] for k, n in sorted(shared.items())]})


def finish_time_fairness(jct: dict, by_id: dict, table: ThroughputTable, cluster: Cluster,
                         occupancy: dict, rounds_in: dict) -> dict[int, float]:
    """rho per finished job: its JCT over its time alone with a 1/n share of the
    cluster, n being the number of active jobs averaged over the rounds it lived."""
    types = cluster.types
    total_acc = sum(cluster.counts.values())
    ftf = {}
    for m, t in jct.items():
        job = by_id[m]
        teq = table.row(job.key, types) @ (np.array([cluster.counts[x] for x in types]) / total_acc)
        n_avg = occupancy.get(m, 1.0) / max(rounds_in.get(m, 1), 1)
        fair = teq * min(1.0, total_acc / (max(n_avg, 1.0) * job.scale_factor))
        ftf[m] = t / (job.total_steps / fair)
    return ftf


def _drop_finished(units, A, scale, runnable, rates, finish):
    keep = [i for i, u in enumerate(units) if not set(RoundMechanism.members(u)) & finish.keys()]
    return ([units[i] for i in keep], A[keep], scale[keep], runnable[keep], [rates[i] for i in keep])


def schedulable_units(active, prob, alloc):
    """Schedulable units: every job, then every pair with a positive allocation."""
    units = list(active)
    A = [alloc.X]
    scale = [prob.scale]
    runnable = [prob.T > 0]
    rates = [np.stack([prob.T[m], np.zeros(prob.k)], axis=1) for m in range(prob.n)]
    if len(alloc.pairs):
        keep = alloc.Y.sum(axis=1) > 1e-6
        row = {(int(a), int(b)): r for r, (a, b) in enumerate(prob.pairs)}
        for p in np.flatnonzero(keep):
            a, b = alloc.pairs[p]
            units.append((active[a], active[b]))
            rates.append(prob.TP[row[(int(a), int(b))]])
        A.append(alloc.Y[keep])
        scale.append(prob.scale[alloc.pairs[keep, 0]])
        runnable.append(np.zeros((int(keep.sum()), prob.k), bool))
    return units, np.vstack(A), np.concatenate(scale), np.vstack(runnable), rates


class _Bar:
    def __init__(self, total: int, name: str):
        from rich.progress import Progress
        self.p = Progress(transient=True)
        self.p.start()
        self.task = self.p.add_task(f"simulating {name}", total=total)

    def advance(self):
        self.p.advance(self.task)

    def close(self):
        self.p.stop()
