"""PipeDream's cost model and its dynamic program over layers and workers on a Topology.

Workers are the topology's compute devices in host order (rank r runs on
device r), so consecutive ranks share a host and the hierarchy (within a node,
across nodes) shows up as the bandwidth between the ranks a stage spans. A
stage is a layer range [i, j) replicated on r consecutive ranks (data parallel
within the stage). Per mini-batch of M micro-batches (micro-batch size b):

* a stage costs ``M * (sum(fwd + bwd)[i:j] + o) / r + allreduce(params[i:j], r)``,
  where ``o`` is the profile's ``meta['stage_overhead_s']`` (one autograd call per
  stage and micro-batch, which the per-layer times exclude);
  with a ring all-reduce ``2 (r-1)/r * bytes / bw`` over the group's slowest hop;
* a boundary after layer j-1 costs ``M * 2 * act_bytes[j-1] / bw(rank, rank+1)``
  (activations forward, gradients back).

The measured costs below are fields of one `weft.planner.settings.PlannerSettings`:

* with ``cpu_copy_bw`` (loopback gloo: the ranks' CPUs copy every message) a stage
  also pays ``M / r * 2 * (act_bytes[i-1] + act_bytes[j-1]) / cpu_copy_bw`` for the
  activations and gradients it sends and receives (not at the model's ends), and a
  replicated stage ``2 * ring / cpu_copy_bw`` for the all-reduce's bytes each replica
  sends and receives (``ring = 2 (r-1)/r * params``); with ``allreduce_bw`` (measured
  by `weft.planner.overhead.calibrate`) the all-reduce costs ``ring / allreduce_bw``
  instead of the link and copy terms;
* with ``action_overhead_s`` (the runtime's own cost per schedule action, measured by
  `weft.planner.overhead.calibrate`) a stage pays it for each of its actions per
  micro-batch: F and B, plus a receive and a send for each neighbouring stage,
  ``M / r * o * (2 + 2 [i > 0] + 2 [j < L])``;
* with ``compute_scale`` k (measured by `weft.planner.contention`: how much slower the
  ranks compute when all compute at once) every profiled forward and backward time and
  the per-stage autograd call are multiplied by k (``o``, measured on the runtime, is not).

The plan's time is the slowest stage or boundary (PipeDream's steady state).

``A[i][m]`` = best time for layers [i, L) on the last m ranks; the DP tries
every first stage [i, j) x r replicas and is exact for this cost model (the
tests check it against brute force). Memory per replica: parameters, gradients
and ``optimizer_states`` copies, plus ``in_flight`` micro-batches of saved
activations and (with weight stashing) ``in_flight - 1`` stashed weight
versions, where ``in_flight = min(ceil(downstream ranks / r), M)`` (1F1B keeps
at most one micro-batch per downstream worker in flight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weft.errors import PlanError
from weft.parallel.pipeline.stages import PipelinePlan, Stage
from weft.planner.profile import ModelProfile
from weft.planner.settings import UNCALIBRATED, PlannerSettings
from weft.topology.model import Topology


def workers_of(topology: Topology, n: int | None = None) -> list[str]:
    """The first `n` compute devices, grouped by host (rank order)."""
    devs = [d for names in topology.hosts().values() for d in names]
    n = len(devs) if n is None else n
    if n < 1 or n > len(devs):
        raise PlanError(f"topology {topology.name!r} has {len(devs)} compute devices; "
                        f"cannot use {n} workers")
    return devs[:n]


@dataclass
class CostModel:
    """Stage, boundary and memory costs for a profile on given ranks (see module doc)."""

    profile: ModelProfile
    bandwidth: np.ndarray  # [W, W] bytes/s between ranks
    memory: np.ndarray  # [W] device bytes
    microbatches: int = 4
    optimizer_states: int = 1
    stash: bool = True
    # cpu_copy_bw, action_overhead_s, allreduce_bw, compute_scale (weft.planner.settings)
    settings: PlannerSettings = UNCALIBRATED

    @classmethod
    def build(cls, profile: ModelProfile, topology: Topology, workers: int | None = None,
              micro_batch: int | None = None, **kw) -> "CostModel":
        names = workers_of(topology, workers)
        prof = profile.scaled(micro_batch) if micro_batch else profile
        W = len(names)
        bw = np.full((W, W), np.inf)
        for a in range(W):
            for b in range(W):
                if a != b:
                    bw[a, b] = topology.path_bandwidth(names[a], names[b]) or 1e-9
        mem = np.array([topology.device(n).memory for n in names], dtype=float)
        model = cls(prof, bw, mem, **kw)
        model.devices = names
        return model

    def __post_init__(self):
        L, W = len(self.profile), len(self.memory)
        self.W, self.L = W, L
        ls = self.profile.layers
        k = self.settings.compute_scale
        z = lambda v: np.concatenate([[0.0], np.cumsum(v)])  # noqa: E731
        self.c_compute = z([l.compute_s * k for l in ls])
        # one autograd call per stage and micro-batch
        self.overhead = float(self.profile.meta.get("stage_overhead_s", 0.0)) * k
        self.c_params = z([l.param_bytes for l in ls])
        self.c_act = z([l.saved_bytes + l.output_bytes for l in ls])
        self.out_bytes = np.array([l.output_bytes for l in ls], dtype=float)
        # Ring all-reduce bandwidth of ranks [a, a+r): the slowest hop of the ring.
        self.group_bw = np.full((W, W + 1), np.inf)
        self.group_mem = np.zeros((W, W + 1))
        for a in range(W):
            chain = np.inf
            for r in range(1, W - a + 1):
                if r > 1:
                    chain = min(chain, self.bandwidth[a + r - 2, a + r - 1])
                    self.group_bw[a, r] = min(chain, self.bandwidth[a + r - 1, a])
                self.group_mem[a, r] = self.memory[a:a + r].min()
        if not hasattr(self, "devices"):
            self.devices = [f"rank{i}" for i in range(W)]

    # -- primitive costs (shared by the DP, brute force and plan evaluation) --
    def stage_time(self, i, j, a: int, r: int):
        s = self.settings
        comp = self.microbatches * (self.c_compute[j] - self.c_compute[i] + self.overhead) / r
        if s.cpu_copy_bw:
            i_, j_ = np.asarray(i), np.asarray(j)
            moved = np.where(i_ > 0, self.out_bytes[np.maximum(i_ - 1, 0)], 0.0) + \
                np.where(j_ < self.L, self.out_bytes[np.maximum(j_ - 1, 0)], 0.0)
            comp = comp + self.microbatches * 2 * moved / (r * s.cpu_copy_bw)
        if s.action_overhead_s:
            n = 2 + 2 * (np.asarray(i) > 0) + 2 * (np.asarray(j) < self.L)
            comp = comp + self.microbatches * s.action_overhead_s * n / r
        if r == 1:
            return comp
        params = self.c_params[j] - self.c_params[i]
        ring = 2 * (r - 1) / r * params  # bytes each replica sends (and receives)
        if s.allreduce_bw:  # measured end to end (weft.planner.overhead.calibrate)
            return comp + ring / s.allreduce_bw
        copies = 2 * ring / s.cpu_copy_bw if s.cpu_copy_bw else 0.0
        return comp + ring / self.group_bw[a, r] + copies

    def boundary_time(self, j, b: int):
        """Sending layer j-1's output from rank b-1 to rank b (and its gradient back)."""
        return self.microbatches * 2 * self.out_bytes[np.asarray(j) - 1] / self.bandwidth[b - 1, b]

    def in_flight(self, a: int, r: int) -> int:
        return min(math.ceil((self.W - a) / r), self.microbatches)

    def stage_memory(self, i, j, a: int, r: int):
        k = self.in_flight(a, r)
        params = self.c_params[j] - self.c_params[i]
        versions = (k - 1) if self.stash else 0
        return params * (2 + self.optimizer_states + versions) + k * (self.c_act[j] - self.c_act[i])

    def fits(self, i, j, a: int, r: int):
        return self.stage_memory(i, j, a, r) <= self.group_mem[a, r]

    def evaluate(self, bounds: list[tuple[int, int]], replicas: list[int]) -> tuple[float, bool]:
        """(time per mini-batch, fits in memory) of a partition."""
        worst, ok, a = 0.0, True, 0
        for s, ((i, j), r) in enumerate(zip(bounds, replicas)):
            worst = max(worst, float(self.stage_time(i, j, a, r)))
            ok &= bool(self.fits(i, j, a, r))
            a += r
            if s < len(bounds) - 1:
                worst = max(worst, float(self.boundary_time(j, a)))
        return worst, ok

    # -- the dynamic program ---------------------------------------------------
    def table(self, end: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The DP for layers [0, end): A[i, m] = best time of layers [i, end) on the last m
        ranks, and choice[i, m] = (end of the first stage, its replicas)."""
        L, W = self.L if end is None else end, self.W
        A = np.full((L + 1, W + 1), np.inf)
        choice = np.zeros((L + 1, W + 1, 2), dtype=int)
        A[L, 0] = 0.0
        if L == 0:
            return A, choice
        I = np.arange(L)[:, None]  # first layer of the stage
        J = np.arange(L + 1)[None, :]  # end of the stage
        later = J > I
        for m in range(1, W + 1):  # A[:, m] only needs A[:, m' < m]
            a = W - m
            best = np.full(L, np.inf)
            arg = np.zeros((L, 2), dtype=int)
            for r in range(1, m + 1):
                if r == m:  # the last stage takes every remaining layer
                    val = np.full((L, L + 1), np.inf)
                    val[:, L] = self.stage_time(I[:, 0], L, a, r)
                    ok = np.zeros((L, L + 1), dtype=bool)
                    ok[:, L] = self.fits(I[:, 0], L, a, r)
                else:
                    Jc = np.minimum(J, L - 1)[:, :L]  # boundary after layer j-1, j < L
                    val = np.maximum(np.maximum(self.stage_time(I, J[:, :L], a, r),
                                                self.boundary_time(np.maximum(Jc, 1), a + r)),
                                     A[None, :L, m - r])
                    val = np.concatenate([val, np.full((L, 1), np.inf)], axis=1)
                    ok = np.concatenate([self.fits(I, J[:, :L], a, r),
                                         np.zeros((L, 1), dtype=bool)], axis=1)
                val = np.where(later & ok, val, np.inf)
                k = val.argmin(axis=1)
                v = val[np.arange(L), k]
                better = v < best
                best = np.where(better, v, best)
                arg[better] = np.stack([k[better], np.full(better.sum(), r)], axis=1)
            A[:L, m] = best
            choice[:L, m] = arg
        return A, choice

    @staticmethod
    def walk(choice: np.ndarray, first: int, end: int, m: int):
        """(bounds, replicas) of the DP's choice for layers [first, end) on m ranks."""
        bounds, reps, i = [], [], first
        while i < end:
            j, r = choice[i, m]
            bounds.append((i, int(j)))
            reps.append(int(r))
            i, m = int(j), m - int(r)
        return bounds, reps

    def solve(self) -> tuple[float, list[tuple[int, int]], list[int]]:
        A, choice = self.table()
        if not np.isfinite(A[0, self.W]):
            raise PlanError(self._no_fit_message())
        bounds, reps = self.walk(choice, 0, self.L, self.W)
        return float(A[0, self.W]), bounds, reps

    def _no_fit_message(self) -> str:
        best_mem = self.memory.max()
        for l in range(self.L):
            need = min(self.stage_memory(l, l + 1, a, 1) for a in range(self.W))
            if need > best_mem:
                name = self.profile.layers[l].name
                return (f"model does not fit: layer {l} ({name!r}) needs {need / 2**20:.1f} MiB "
                        f"even as a stage of its own (parameters, gradients, optimizer state, "
                        f"activations), but the largest device has {best_mem / 2**20:.1f} MiB")
        return (f"model does not fit on {self.W} workers: every partition of its {self.L} layers "
                f"has a stage exceeding its device memory (largest device "
                f"{best_mem / 2**20:.1f} MiB); use more workers or fewer micro-batches")

    def to_plan(self, bounds, reps, method: str, **kw) -> PipelinePlan:
        stages, a = [], 0
        for (i, j), r in zip(bounds, reps):
            stages.append(Stage((i, j), list(range(a, a + r)), self.devices[a:a + r],
                                float(self.stage_time(i, j, a, r)),
                                float(self.stage_memory(i, j, a, r))))
            a += r
        t, ok = self.evaluate(bounds, reps)
        mb = self.profile.batch_size
        return PipelinePlan(stages, self.L, mb, self.microbatches, method,
                            layer_names=[l.name for l in self.profile.layers], bottleneck_s=t,
                            predicted_samples_per_s=self.microbatches * mb / t if t > 0 else 0.0,
                            extra={"fits": ok, "settings": self.settings.to_dict()},
                            **kw).validate()
