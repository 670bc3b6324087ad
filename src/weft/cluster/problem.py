"""The input of a policy (arrays over active jobs x accelerator types) and its output.

``T[m, j]`` is job m's throughput (steps/s, for its scale factor) on type j;
an allocation ``X[m, j]`` is the fraction of time job m spends on type j.
Space sharing adds pair units: ``pairs[p] = (a, b)`` and ``TP[p, j] = (ta, tb)``,
with pair allocation ``Y[p, j]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from weft.cluster.model import Cluster, ClusterError, Job
from weft.cluster.throughputs import ThroughputTable

TOL = 1e-6


@dataclass
class Problem:
    T: np.ndarray                   # (n, k) steps/s
    scale: np.ndarray               # (n,) accelerators per job
    counts: np.ndarray              # (k,) accelerators per type (may be fractional under POP)
    weight: np.ndarray = None       # (n,) priority weights
    remaining: np.ndarray = None    # (n,) steps left
    elapsed: np.ndarray = None      # (n,) seconds since arrival
    deadline: np.ndarray = None     # (n,) seconds left until SLO (inf = none)
    arrival: np.ndarray = None      # (n,) arrival times (FIFO order)
    prices: np.ndarray = None       # (k,) $ per accelerator-hour
    pairs: np.ndarray = None        # (P, 2) job indices
    TP: np.ndarray = None           # (P, k, 2) pair throughputs
    types: list = field(default_factory=list)
    ids: np.ndarray = None          # (n,) job ids (default 0..n-1)
    scale_options: list = None      # per job: the scale factors it may run at (ascending)
    T_options: list = None          # per job: {scale: (k,) throughputs at that scale}

    def __post_init__(self):
        n, k = self.T.shape
        self.scale = np.asarray(self.scale, float)
        self.counts = np.asarray(self.counts, float)
        ones = np.ones(n)
        self.weight = ones if self.weight is None else np.asarray(self.weight, float)
        self.remaining = ones.copy() if self.remaining is None else np.asarray(self.remaining, float)
        self.elapsed = np.zeros(n) if self.elapsed is None else np.asarray(self.elapsed, float)
        self.deadline = np.full(n, np.inf) if self.deadline is None else np.asarray(self.deadline, float)
        self.arrival = np.arange(n, dtype=float) if self.arrival is None else np.asarray(self.arrival, float)
        self.prices = np.ones(k) if self.prices is None else np.asarray(self.prices, float)
        if self.pairs is None:
            self.pairs = np.zeros((0, 2), int)
            self.TP = np.zeros((0, k, 2))
        if not self.types:
            self.types = [f"t{j}" for j in range(k)]
        self.ids = np.arange(n) if self.ids is None else np.asarray(self.ids, int)
        if self.scale_options is None:
            self.scale_options = [(int(s),) for s in self.scale]
            self.T_options = [{int(s): self.T[m]} for m, s in enumerate(self.scale)]

    @property
    def n(self) -> int:
        return self.T.shape[0]

    @property
    def k(self) -> int:
        return self.T.shape[1]

    def equal_share_throughput(self) -> np.ndarray:
        """Throughput of each job given time on every type in proportion to its count
        (Gavel's normalisation for max-min fairness)."""
        share = self.counts / max(self.counts.sum(), TOL)
        return np.maximum(self.T @ share, TOL)

    def subset(self, idx: np.ndarray, fraction: float) -> Problem:
        """The sub-problem of jobs ``idx`` on ``fraction`` of every type (POP)."""
        idx = np.asarray(idx, int)
        pos = -np.ones(self.n, int)
        pos[idx] = np.arange(len(idx))
        keep = (pos[self.pairs[:, 0]] >= 0) & (pos[self.pairs[:, 1]] >= 0) if len(self.pairs) else np.zeros(0, bool)
        sub = Problem(self.T[idx], self.scale[idx], self.counts * fraction, self.weight[idx],
                      self.remaining[idx], self.elapsed[idx], self.deadline[idx], self.arrival[idx],
                      self.prices, pos[self.pairs[keep]], self.TP[keep], list(self.types), self.ids[idx],
                      [self.scale_options[i] for i in idx], [self.T_options[i] for i in idx])
        sub.pair_origin = np.flatnonzero(keep)   # row of each sub-problem pair in self.pairs
        return sub


@dataclass
class Allocation:
    X: np.ndarray                       # (n, k)
    Y: np.ndarray = None                # (P, k) pair allocation
    pairs: np.ndarray = None            # (P, 2)
    objective: float = float("nan")
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.Y is None:
            self.Y = np.zeros((0, self.X.shape[1]))
            self.pairs = np.zeros((0, 2), int)

    def effective_throughput(self, prob: Problem) -> np.ndarray:
        eff = (prob.T * self.X).sum(axis=1)
        if len(self.pairs):
            for side in (0, 1):
                np.add.at(eff, self.pairs[:, side], (prob.TP[:, :, side] * self.Y).sum(axis=1))
        return eff

    def time_share(self) -> np.ndarray:
        s = self.X.sum(axis=1)
        if len(self.pairs):
            for side in (0, 1):
                np.add.at(s, self.pairs[:, side], self.Y.sum(axis=1))
        return s

    def used(self, prob: Problem) -> np.ndarray:
        u = (self.X * prob.scale[:, None]).sum(axis=0)
        if len(self.pairs):
            u += (self.Y * prob.scale[self.pairs[:, 0], None]).sum(axis=0)
        return u

    def feasibility_errors(self, prob: Problem, tol: float = 1e-5) -> list[str]:
        """Empty when X >= 0, every job's time share <= 1 and per-type capacity holds."""
        errs = []
        if (self.X < -tol).any() or (self.Y < -tol).any():
            errs.append("negative allocation")
        share = self.time_share()
        if (share > 1 + tol).any():
            errs.append(f"job time share above 1: max {share.max():.6f}")
        used = self.used(prob)
        over = used - prob.counts
        if (over > tol * max(1.0, prob.counts.max())).any():
            errs.append(f"capacity exceeded: used {used} of {prob.counts}")
        return errs


def check_runnable(jobs: list[Job], cluster: Cluster, table: ThroughputTable) -> None:
    """Raise ClusterError unless every job can run on some accelerator type of the
    cluster: a positive throughput there and at least ``scale_factor`` of that type."""
    types = cluster.types
    for job in jobs:
        where = getattr(job.task, "where", None) or f"job {job.job_id}"
        row = table.row(job.key, types) if table.has(job.key) else None
        usable = [t for t, v in zip(types, row if row is not None else []) if v > 0]
        if not usable:
            raise ClusterError(f"{where}: type {job.job_type!r} (scale factor {job.scale_factor}) "
                               f"has no throughput on any accelerator type of the cluster {types}")
        most = max(usable, key=lambda t: cluster.counts[t])
        if job.scale_factor > cluster.counts[most]:
            raise ClusterError(f"{where}: scale_factor {job.scale_factor}: needs {job.scale_factor} accelerators "
                               f"at once, but the cluster has at most {cluster.counts[most]} of a type it can "
                               f"use ({most}); it could never run")


def build_problem(jobs: list[Job], cluster: Cluster, table: ThroughputTable, now: float = 0.0,
                  done_steps: dict | None = None, with_pairs: bool = False,
                  max_partners: int = 4) -> Problem:
    """Arrays for the active ``jobs`` at time ``now`` (``done_steps[job_id]`` progress)."""
    types = cluster.types
    done_steps = done_steps or {}
    T = np.array([table.row(j.key, types) for j in jobs]).reshape(len(jobs), len(types))
    rem = np.array([max(j.total_steps - done_steps.get(j.job_id, 0.0), 0.0) for j in jobs])
    dl = np.array([(j.arrival_time + j.slo - now) if j.slo else np.inf for j in jobs])
    options = [j.scale_options for j in jobs]
    T_options = [{s: (table.row((j.job_type, s), types) if table.has((j.job_type, s)) else np.zeros(len(types)))
                  for s in opts} for j, opts in zip(jobs, options)]
    prob = Problem(T, [j.scale_factor for j in jobs], [cluster.counts[t] for t in types],
                   [j.priority_weight for j in jobs], rem,
                   np.array([now - j.arrival_time for j in jobs]), dl,
                   np.array([j.arrival_time for j in jobs]),
                   np.array([cluster.prices[t] for t in types]), types=list(types),
                   ids=np.array([j.job_id for j in jobs], int), scale_options=options, T_options=T_options)
    if with_pairs:
        from weft.cluster.pairs import candidate_pairs
        prob.pairs, prob.TP = candidate_pairs(jobs, prob, table, types, max_partners)
    return prob
