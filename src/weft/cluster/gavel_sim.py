"""The simulator with Gavel's semantics (``simulate(..., semantics="gavel")``).

Reproduces the round loop of Gavel's simulator (``Scheduler.simulate`` and the
round mechanism in ``scheduler/scheduler.py`` of stanford-futuredata/gavel,
c4fa400) where it differs from weft's own simulator; see docs/cluster.md,
"Two semantics", for each difference and its measured effect:

* a scheduled job runs ``min(int(throughput * round), remaining)`` steps and
  finishes at ``start + steps / throughput``; the round ends when its last job
  finishes (rounds are a little under 360 s, shorter when every job ends early);
* the allocation is recomputed only at a round boundary, when a job arrived,
  finished or failed since the last solve and either 1920 s passed since the
  last reset or the last reset was at t=0; a job outside the allocation is never
  given workers, although it counts against the type's free workers in the
  round's greedy pass; when nothing runs the clock jumps to the next arrival,
  and a reset is forced only when no arrival is left;
* per type, jobs are ranked by ``X / (time on the type since the reset /
  the type's time)`` (times start at half a round), ties by deficit, then X,
  then arrival; the types' lists are walked one after another, in the order
  v100, p100, k80 for heterogeneity-aware policies and shuffled every round
  (``random.Random(seed + 5)``) for agnostic ones;
* FIFO never places a job on a type where its priority is 0;
* a multi-GPU micro-task fails when one of its workers would get 0 steps
  (``steps // scale``); after 5 failures in a row the job is dropped, without a JCT.
"""

from __future__ import annotations

import random
import time

import numpy as np

from weft.cluster.gavel_policies import flavor_for
from weft.cluster.model import Cluster, ClusterError, Job
from weft.cluster.policies.base import SchedulingPolicy
from weft.cluster.problem import build_problem, check_runnable
from weft.cluster.throughputs import ThroughputTable

ABLATIONS = {
    "shuffle": "agnostic policies walk the types in the fixed order v100, p100, k80",
    "fifo_skip": "FIFO may place jobs on types where their priority is 0",
    "rounds": "every round lasts 360 s and credits fractional steps (throughput x time run)",
    "cadence": "re-solve at every round with an arrival or completion (no 1920 s wait)",
    "center": "LP policies return a HiGHS vertex (weft's policy) instead of the central point",
}
MAX_FAILED_ATTEMPTS = 5
RESET_SECONDS = 1920.0
GAVEL_TYPE_ORDER = ["v100", "p100", "k80"]


class GavelSim:
    def __init__(self, jobs: list[Job], cluster: Cluster, table: ThroughputTable, policy: SchedulingPolicy,
                 round_seconds: float, seed: int, resolve_every: float, ablate: frozenset = frozenset(),
                 lp_solver: str = "center"):
        check_runnable(jobs, cluster, table)
        bad = set(ablate) - ABLATIONS.keys()
        if bad:
            raise ClusterError(f"ablate: unknown {sorted(bad)}; choose from {', '.join(ABLATIONS)}")
        self.ablate = frozenset(ablate)
        if "cadence" in self.ablate:
            resolve_every = 0.0
        self.policy, self.table, self.round = policy, table, float(round_seconds)
        self.resolve_every = resolve_every
        self.flavor = flavor_for(policy, seed, central="center" not in self.ablate, lp_solver=lp_solver)
        self.shuffler = random.Random(seed + 5)
        self.present = [t for t in cluster.types if cluster.counts[t] > 0]
        self.order = ([t for t in GAVEL_TYPE_ORDER if t in self.present]
                      + [t for t in self.present if t not in GAVEL_TYPE_ORDER])
        self.counts = {t: cluster.counts[t] for t in self.present}
        self.cluster = Cluster(dict(self.counts), {t: cluster.per_server[t] for t in self.present},
                               {t: cluster.prices[t] for t in self.present})
        self.by_id = {j.job_id: j for j in jobs}
        self.tp = {j.job_id: dict(zip(self.present, (float(x) for x in table.row(j.key, self.present))))
                   for j in jobs}
        self.half = self.round / 2.0
        self.steps_done: dict[int, float] = {}
        self.time_so_far: dict[int, dict[str, float]] = {}   # insertion order = Gavel's priority-dict order
        self.deficit: dict[str, dict[int, float]] = {t: {} for t in self.present}
        self.worker_time = {t: 0.0 for t in self.present}
        self.failures: dict[int, int] = {}
        self.alloc: dict[int, dict[str, float]] = {}
        self.finish: dict[int, float] = {}
        self.failed: set[int] = set()
        self.last_reset, self.need_update, self.now = 0.0, False, 0.0
        self.solves, self.solve_s, self.busy, self.remaining = 0, 0.0, 0.0, len(jobs)
        self.occupancy: dict[int, float] = {}
        self.rounds_in: dict[int, int] = {}

    # -- Gavel's _reset_time_run_so_far + _compute_allocation
    def reset_and_solve(self) -> None:
        elapsed = self.now - self.last_reset
        for t in self.present:
            self.worker_time[t] = 0.0
            for m, times in self.time_so_far.items():
                should = self.alloc[m][t] * elapsed if m in self.alloc else 0.0
                self.deficit[t][m] += should - (times[t] - self.half)
                times[t] = self.half
                self.worker_time[t] += self.half
        self.last_reset = self.now
        ids = sorted(self.time_so_far)
        self.alloc = {}
        if not ids:
            return
        prob = build_problem([self.by_id[m] for m in ids], self.cluster, self.table, self.now, self.steps_done)
        s0 = time.perf_counter()
        X = np.clip(self.flavor.allocate(prob, ids), 0.0, 1.0)
        self.solve_s += time.perf_counter() - s0
        self.solves += 1
        self.alloc = {m: dict(zip(self.present, (float(x) for x in X[r]))) for r, m in enumerate(ids)}

    def add(self, m: int) -> None:
        self.steps_done[m], self.failures[m] = 0.0, 0
        self.time_so_far[m] = {t: self.half for t in self.present}
        for t in self.present:
            self.deficit[t][m] = 0.0
        self.need_update = True

    def remove(self, m: int) -> None:
        del self.time_so_far[m]
        for t in self.present:
            del self.deficit[t][m]
        self.remaining -= 1
        self.need_update = True

    def complete(self, m: int, t: str, steps: float, run_s: float, fin: float) -> None:
        """A micro-task's end (Gavel's _done_callback, simulated)."""
        s = self.by_id[m].scale_factor
        worker_steps = [steps // s] * (s - 1) + [steps - (s - 1) * (steps // s)]
        if min(worker_steps) <= 0 or run_s <= 0:
            self.failures[m] += 1
            self.need_update = True
            if self.failures[m] >= MAX_FAILED_ATTEMPTS:
                self.failed.add(m)
                self.remove(m)
            return
        self.failures[m] = 0
        self.steps_done[m] += steps
        self.time_so_far[m][t] += run_s
        self.worker_time[t] += run_s
        self.busy += run_s * s
        if self.by_id[m].total_steps - self.steps_done[m] <= 0:
            self.finish[m] = fin
            self.remove(m)

    def priorities(self) -> dict[str, dict[int, float]]:
        prio: dict[str, dict[int, float]] = {t: {} for t in self.present}
        for t in self.present:
            wt = self.worker_time[t]
            for m, times in self.time_so_far.items():
                frac = times[t] / wt if wt != 0.0 else 0.0
                a = self.alloc[m][t] if m in self.alloc else 0.0
                if a == 0.0 or self.tp[m][t] == 0:
                    p = 0.0
                elif frac > 0.0:
                    p = a / frac
                else:
                    p = a * 1e9
                prio[t][m] = p
        return prio

    def schedule(self) -> list[tuple]:
        """One round's micro-tasks: (finish time, job, type, steps, end of its share of the round)."""
        if self.need_update and (self.now - self.last_reset >= self.resolve_every or self.last_reset == 0):
            self.reset_and_solve()
            self.need_update = False
        prio = self.priorities()
        types = list(self.order)
        if self.flavor.shuffle and "shuffle" not in self.ablate:
            self.shuffler.shuffle(types)
        left = dict(self.counts)
        placed: set[int] = set()
        out = []
        for t in types:
            def key(m, t=t):
                return (prio[t][m], self.deficit[t][m], self.alloc[m][t] if m in self.alloc else 0.0)
            for m in sorted(self.time_so_far, key=key, reverse=True):
                if left[t] == 0 or m in placed or self.tp[m][t] <= 0:
                    continue
                if self.flavor.fifo and prio[t][m] <= 0.0 and "fifo_skip" not in self.ablate:
                    continue
                s = self.by_id[m].scale_factor
                if s > left[t]:
                    continue
                left[t] -= s
                placed.add(m)
                if m not in self.alloc:            # takes the workers from the greedy pass, never runs
                    continue
                rate = self.tp[m][t]
                left_steps = self.by_id[m].total_steps - self.steps_done[m]
                if "rounds" in self.ablate:        # fractional credit; the round lasts a full round
                    steps = min(rate * self.round, left_steps)
                    out.append((self.now + steps / rate, m, t, steps, self.now + self.round))
                else:
                    steps = min(int(rate * self.round), left_steps)
                    out.append((self.now + steps / rate, m, t, steps, self.now + steps / rate))
        return out

    def run(self, targets: set[int]) -> tuple[int, int, bool]:
        queued = sorted(self.by_id.values(), key=lambda j: (j.arrival_time, j.job_id))
        qi = 0
        self.now = queued[0].arrival_time
        round_start, round_end = 0.0, None
        running: list[tuple] = []
        rounds = preempt = 0
        ran_out = False
        last_ran: set[int] = set()
        while self.remaining > 0 and not targets <= (self.finish.keys() | self.failed):
            next_arrival = queued[qi].arrival_time if qi < len(queued) else None
            if next_arrival is None:
                ran_out = True
                if not running:
                    self.last_reset = 0.0          # forced reset: nothing runs and no arrival is left
            if running:
                if round_end is not None:
                    round_start = round_end
                round_end = self.now = max(r[4] for r in running)
            elif next_arrival is not None:
                self.now = next_arrival
            for fin, m, t, steps, _ in running:
                self.complete(m, t, steps, fin - round_start, fin)
            while qi < len(queued) and queued[qi].arrival_time <= self.now:
                self.add(queued[qi].job_id)
                qi += 1
            changed = self.need_update
            running = self.schedule()
            ran = {r[1] for r in running}
            preempt += len((last_ran - ran) & self.time_so_far.keys())
            last_ran = ran
            if running:
                rounds += 1
                for m in self.time_so_far:
                    self.occupancy[m] = self.occupancy.get(m, 0.0) + len(self.time_so_far)
                    self.rounds_in[m] = self.rounds_in.get(m, 0) + 1
            elif qi >= len(queued) and not changed:
                raise ClusterError(f"semantics='gavel': {self.remaining} job(s) can never be scheduled at "
                                   f"t={self.now:.0f} s under {self.policy.name}")
        return rounds, preempt, ran_out


def simulate_gavel(jobs: list[Job], cluster: Cluster, table: ThroughputTable, policy: SchedulingPolicy,
                   round_seconds: float = 360.0, measure: tuple[int, int] | None = None, seed: int = 0,
                   resolve_every: float = RESET_SECONDS, ablate=(), lp_solver: str = "center"):
    """Run ``jobs`` as Gavel's simulator would; returns a ``SimResult``. Jobs that
    Gavel would drop as failed have no JCT and are left out of the window
    (``extra["failed"]``). ``ablate`` names behaviours of Gavel to leave out
    (``ABLATIONS``), to measure what each one changes. ``lp_solver="ecos"`` solves
    the LAS LPs with cvxpy + ECOS as Gavel does (``gavel_cvx``; needs ``weft[gavel]``)."""
    from weft.cluster.simulator import SimResult, finish_time_fairness

    if measure and not (0 <= measure[0] < measure[1] <= len(jobs)):
        raise ClusterError(f"measure window {measure} is outside the {len(jobs)} jobs")
    start = time.perf_counter()
    sim = GavelSim(jobs, cluster, table, policy, round_seconds, seed, resolve_every, frozenset(ablate), lp_solver)
    targets = {jobs[i].job_id for i in (range(*measure) if measure else range(len(jobs)))}
    rounds, preempt, ran_out = sim.run(targets)
    jct = {m: f - sim.by_id[m].arrival_time for m, f in sim.finish.items()}
    t0 = min(j.arrival_time for j in jobs)
    makespan = sim.now - t0
    total = sum(sim.counts.values())
    ftf = finish_time_fairness(jct, sim.by_id, table, sim.cluster, sim.occupancy, sim.rounds_in)
    window = sorted(targets - sim.failed)
    return SimResult(policy.name, jct, window, makespan, sim.busy / (total * max(sim.now, 1e-9)), ftf, rounds,
                     sim.solves, sim.solve_s, time.perf_counter() - start, preempt,
                     extra={"arrivals_ran_out": measure is not None and ran_out, "failed": sorted(sim.failed),
                            "semantics": "gavel", "gavel_policy": sim.flavor.gavel_name})
