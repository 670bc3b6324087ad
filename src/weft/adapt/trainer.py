"""The adaptive training loop that runs in every worker process.

Per step: take this rank's slice of the global epoch permutation, forward /
backward the user's model and loss, synchronise with the current strategy (the
monitors' statistics ride along), step the optimizer and LR scheduler, update the
metrics, run the user's callbacks, keep an in-memory snapshot of the completed step
(and hand a checkpoint to the background writer when one is due), then run the policy
and apply its (validated) actions at the step boundary. Membership changes, failure
recovery and re-planning are in weft.adapt.changes.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import time

import torch.distributed as dist

from weft.adapt import actions as A
from weft.adapt import callbacks as C
from weft.adapt import sync
from weft.adapt.changes import Changes
from weft.adapt.config import AdaptConfig
from weft.adapt.engine import make as make_engine
from weft.adapt.engine import set_lr, unaveragable
from weft.adapt.guard import PeerFailure
from weft.adapt.membership import MemberLost
from weft.adapt.monitors import N_STATS, Monitors, pack
from weft.adapt.policy import Context, as_actions, to_policy
from weft.adapt.replan import CommPlan, Replanner
from weft.adapt.sharding import EpochSharder
from weft.adapt.snapshot import copy_state
from weft.adapt.workload import Built, get_batch
from weft.collectives.communicator import TorchCommunicator

log = logging.getLogger("weft.adapt")
MAX_RECOVERIES = 8
RECENT = 8  # step times kept for "measured before/after" of re-plans


def is_comm_failure(exc: BaseException) -> bool:
    """A collective or store failed (a peer died or timed out), not a bug in the model."""
    if isinstance(exc, (PeerFailure, MemberLost, getattr(dist, "DistError", PeerFailure))):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in msg for s in ("gloo", "connection", "timed out", "timeout", "closed", "peer",
                           "socket", "broken pipe", "reset"))


class Trainer(Changes):
    def __init__(self, cfg: AdaptConfig, built: Built, policy, membership, wid: int,
                 replanner: Replanner | None = None):
        self.cfg, self.built, self.wid, self.mem = cfg, built, wid, membership
        self.engine = make_engine(built, cfg.lr)
        self.n_samples = len(built.train)
        self.sharder = EpochSharder(self.n_samples, cfg.seed)
        self.policy = to_policy(policy)
        self.callbacks = built.callbacks
        self.user = built.state
        self.monitors = Monitors(cfg.ema_decay, cfg.monitor and not self.engine.sharded)
        self.strategy = sync.make(cfg.strategy)
        self.comm = TorchCommunicator()
        self.replanner = replanner or Replanner(cfg.topology, cfg.algorithm,
                                                getattr(membership, "store", None))
        self.comm_plan = CommPlan("gloo")
        self.step = self.epoch = self.consumed = 0
        self.batch_size = cfg.batch_size
        self.global_batch = cfg.batch_size * cfg.workers  # kept by batch_rule "global"
        self.replans = 0
        self.recent: list[tuple[float, float]] = []  # reduced (step, comm) time per step
        self.compute_ps: float | None = None  # compute seconds per local sample (EMA)
        self.last_step_time = self.last_comm_time = 0.0
        self.history: list[dict] = []
        self.events: list[dict] = []
        self.samples: list[tuple[int, int, list[int]]] = []  # (step, epoch, indices)
        self.memberships: list[dict] = []
        self.metrics: dict = {}
        self.capacity = 0  # workers the live nodes can host; 0 = unknown (after a resize)
        self.snap: dict | None = None
        self.resize_started = None
        self.after: list[tuple[int, int, list]] = []  # re-plan events awaiting measurements
        self.fresh = True  # the first step in a new world (its predecessor was elsewhere)
        self.left = False
        self.benched = False  # left out of the group after a failure: a standby now
        self.run_view = C.Run(self)
        self.ckpt = None
        if cfg.checkpoint:
            from weft.adapt.durable import Checkpointer

            self.ckpt = Checkpointer(cfg.checkpoint, cfg.checkpoint_every)

    # -- sizes ------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.engine.lr

    def global_size(self) -> int:
        if self.cfg.batch_rule == "global":
            return self.global_batch
        return self.batch_size * max(1, self.mem.world)

    def per_worker(self) -> int:
        if self.cfg.batch_rule == "global":
            return max(1, self.global_batch // max(1, self.mem.world))
        return self.batch_size

    def grad_bytes(self) -> int:
        return sum(p.numel() for p in self.engine.params) * 4 + N_STATS * 4

    # -- state --------------------------------------------------------------------
    def extras(self) -> dict:
        pol = self.policy.state_dict() if hasattr(self.policy, "state_dict") else {}
        return {"step": self.step, "epoch": self.epoch, "consumed": self.consumed,
                "batch_size": self.batch_size, "global_batch": self.global_batch,
                "strategy": self.strategy.name, "round": getattr(self.strategy, "round", 0),
                "monitors": self.monitors.state_dict(), "policy": pol,
                "policy_type": type(self.policy).__qualname__,
                "callbacks": C.states(self.callbacks),
                "user": self.user.state_dict() if self.user is not None else None,
                "last_step_time": self.last_step_time, "last_comm_time": self.last_comm_time,
                "recent": list(self.recent), "compute_ps": self.compute_ps,
                "replans": self.replans}

    def state(self) -> dict:
        """Everything a replica is (a collective under a plan: every member calls it)."""
        return {"engine": self.engine.state(), **self.extras()}

    def load_extras(self, s: dict) -> None:
        self.step, self.epoch, self.consumed = s["step"], s["epoch"], s["consumed"]
        self.batch_size, self.global_batch = s["batch_size"], s["global_batch"]
        self.last_step_time, self.last_comm_time = s["last_step_time"], s["last_comm_time"]
        self.recent, self.compute_ps, self.replans = list(s["recent"]), s["compute_ps"], \
            s["replans"]
        if self.strategy.name != s["strategy"]:
            self.strategy = sync.make(s["strategy"])
        self.strategy.reset()
        if hasattr(self.strategy, "round"):
            self.strategy.round = s["round"]
        self.monitors.load_state_dict(s["monitors"])
        # a run resumed under another policy starts that policy afresh
        same = s.get("policy_type", type(self.policy).__qualname__) == \
            type(self.policy).__qualname__
        if s["policy"] and same and hasattr(self.policy, "load_state_dict"):
            self.policy.load_state_dict(s["policy"])
        C.load_states(self.callbacks, s["callbacks"])
        if self.user is not None and s["user"] is not None:
            self.user.load_state_dict(s["user"])
        # a rollback undoes the logs of the steps it undoes
        self.history = [h for h in self.history if h["step"] <= self.step]
        self.samples = [x for x in self.samples if x[0] < self.step]

    def load(self, s: dict) -> None:
        self.engine.load(s["engine"])
        self.load_extras(s)

    def event(self, kind: str, detail: str, **kw) -> None:
        e = {"step": self.step, "kind": kind, "detail": detail, "world": self.mem.world, **kw}
        self.events.append(e)
        if self.mem.rank == 0 or kind in ("rejected", "error"):
            log.info("step %d: %s: %s", self.step, kind, detail)
        if kind not in ("join", "leave"):
            C.call(self.callbacks, "on_change", self.run_view, e)

    def context(self) -> Context:
        return Context(self.step, self.epoch, self.mem.world, self.per_worker(), self.lr,
                       self.strategy.name, self.cfg.min_workers, self.cfg.max_workers,
                       self.n_samples, self.mem.epoch, self.capacity, self.global_size(),
                       self.cfg.batch_rule, self.replans, self.comm_plan.algorithm)

    # -- one step ---------------------------------------------------------------
    def train_step(self) -> None:
        t0 = time.perf_counter()
        rank, world = self.engine.dp_rank_size or (self.mem.rank, self.mem.world)
        contributes = getattr(self.engine, "contributes", True)
        idx, total = self.sharder.step_indices(self.epoch, self.consumed, rank, world,
                                               self.global_size())
        self.engine.zero_grad()
        loss_sum = 0.0
        if len(idx):
            loss_sum = self.engine.forward_backward(get_batch(self.built.train, idx), len(idx),
                                                    total)
        elif self.engine.sharded:  # no sample left for this replica: still in the collectives
            one = self.sharder.permutation(self.epoch)[:1]
            self.engine.forward_backward(get_batch(self.built.train, one), 0, total)
        n = len(idx) if contributes else 0
        measure = self.monitors.enabled and (self.strategy.name == "sgd"
                                             or self.step % self.cfg.noise_every == 0)
        cap = 0.0
        if self.mem.rank == 0 and self.cfg.capacity_every and self.mem.store is not None and (
                self.capacity == 0 or self.step % self.cfg.capacity_every == 0):
            cap = float(self.mem.capacity(self.cfg.max_workers))
        stats = pack(0.0, loss_sum if contributes else 0.0, n, self.last_step_time, cap,
                     self.last_comm_time)
        t1 = time.perf_counter()
        reduced, sq_big = self.engine.step(self.strategy, self.comm, len(idx) / total, stats,
                                           measure)
        t_sync = time.perf_counter() - t1
        equal = total == world * self.per_worker() and self.cfg.batch_rule == "per_worker"
        self.metrics = self.monitors.update(reduced, sq_big, equal)
        if self.comm_plan.predicted_s is not None:
            self.metrics["comm_predicted"] = self.comm_plan.predicted_s
        self._measured(world)
        self.capacity = int(self.metrics.get("capacity", self.capacity))
        if self.capacity:
            self.metrics["capacity"] = float(self.capacity)
        if self.cfg.log_samples and contributes:
            self.samples.append((self.step, self.epoch, idx.tolist()))
        at = (self.epoch, self.consumed)  # where in which epoch's order this step read
        self.consumed += total
        self.step += 1
        if self.consumed >= self.n_samples:
            self.epoch, self.consumed = self.epoch + 1, 0
        self.last_step_time, self.last_comm_time = time.perf_counter() - t0, t_sync
        self.history.append({"step": self.step, "loss": self.metrics["loss"],
                             "world": self.mem.world, "replicas": world,
                             "strategy": self.strategy.name, "batch_size": self.per_worker(),
                             "global_batch": total, "at": at, "lr": self.lr,
                             "noise_scale": self.metrics.get("noise_scale"),
                             "throughput": self.metrics.get("throughput"),
                             "step_time": self.last_step_time, "comm_time": t_sync,
                             "algorithm": self.comm_plan.algorithm, "time": time.time()})
        if self.resize_started is not None:
            t0, i = self.resize_started
            self.events[i]["latency_s"] = time.time() - t0
            self.resize_started = None
        self._progress(self.mem.world)

    def _progress(self, world: int) -> None:
        """A progress line from rank 0 at most every `progress_seconds` (0: none)."""
        every, now = self.cfg.progress_seconds, time.perf_counter()
        if not every or self.mem.rank != 0 or now - getattr(self, "_shown", 0.0) < every:
            return
        self._shown = now
        rate = self.metrics.get("throughput")
        print(f"step {self.step}  epoch {self.epoch}  loss {self.metrics['loss']:.4f}  {world} "
              f"worker{'s' * (world != 1)}  {self.strategy.name}"
              + (f"  {rate:,.0f} samples/s" if rate and math.isfinite(rate) else ""), flush=True)

    def _measured(self, world: int) -> None:
        """Book the previous step's reduced times (identical on every rank)."""
        st, ct = self.metrics.get("step_time", 0.0), self.metrics.get("comm_time", 0.0)
        if self.fresh or not st > 0:  # the previous step ran in another world
            self.fresh = False
            return
        self.recent = (self.recent + [(st, ct)])[-RECENT:]
        local = max(1, math.ceil(self.global_size() / world))
        c = max(0.0, st - ct) / local
        self.compute_ps = c if self.compute_ps is None else 0.8 * self.compute_ps + 0.2 * c
        for item in list(self.after):
            i, first, got = item
            if self.step >= first:
                got.append(st)
            if len(got) >= RECENT // 2:
                self.events[i]["measured_after_s"] = sum(got) / len(got)
                self.after.remove(item)

    # -- actions -------------------------------------------------------------
    def _reject(self, a) -> str | None:
        msg = A.validate(a, self.context())
        if msg:
            return msg
        if isinstance(a, A.Resize):
            return self.engine.check_world(a.workers)
        if isinstance(a, A.SwitchStrategy) and a.strategy != self.strategy.name:
            if self.engine.sharded:
                return (f"SwitchStrategy({a.strategy!r}): under plan "
                        f"{self.engine.plan.name!r} the plan synchronises; only 'sgd'")
            why = unaveragable(self.engine.opt)
            if why:
                return (f"SwitchStrategy({a.strategy!r}): {why}, so replicas could not be made "
                        f"equal again; staying with {self.strategy.name!r}")
        return None

    def apply_actions(self, actions: list) -> None:
        resize = replan = None
        for a in actions:
            msg = self._reject(a)
            if msg:
                self.event("rejected", f"invalid action rejected: {msg}")
                continue
            if isinstance(a, A.Resize):
                resize = a if a.workers != self.mem.world else None
            elif isinstance(a, A.Replan):
                replan = a
            elif isinstance(a, A.SetLR):
                set_lr(self.engine.opt, self.engine.sched, float(a.lr))
                self.event("lr", f"lr -> {a.lr:g}")
            elif isinstance(a, A.SetBatchSize) and a.per_worker != self.per_worker():
                old = self.global_size()
                if self.cfg.batch_rule == "global":
                    self.global_batch = a.per_worker * self.mem.world
                else:
                    self.batch_size = a.per_worker
                ratio = self.global_size() / old
                if a.scale_lr:
                    set_lr(self.engine.opt, self.engine.sched,
                           self.lr * (ratio if a.scale_lr == "linear" else math.sqrt(ratio)))
                self.event("batch", f"batch/worker -> {a.per_worker}, lr -> {self.lr:.4g}")
            elif isinstance(a, A.SwitchStrategy) and a.strategy != self.strategy.name:
                old = self.strategy.name
                self.strategy.flush(self.engine.params)
                sync.consensus(self.engine.model, self.engine.opt, self.comm)
                self.strategy = sync.make(a.strategy)
                self.event("switch", f"{old} -> {a.strategy}", strategy=a.strategy)
        if resize is not None:
            self.resize(resize.workers)
        elif replan is not None:
            self.replan(replan.measure)

    # -- the loop --------------------------------------------------------
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs or (self.cfg.max_steps is not None
                                                 and self.step >= self.cfg.max_steps)

    def _snapshot(self) -> None:
        if self.cfg.snapshot and (not self.engine.sharded
                                  or self.step % self.cfg.snapshot_every == 0):
            self.snap = copy_state(self.state())

    def run(self) -> None:
        recoveries = 0
        while not self.done() and not self.left and not self.benched:
            if self.cfg.kill and [self.step, self.wid] == list(self.cfg.kill):
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                self.train_step()
                C.call(self.callbacks, "on_step_end", self.run_view)
                self._snapshot()
                if self.ckpt is not None and self.ckpt.due(self.step):
                    self.checkpoint()
                self.apply_actions(as_actions(self.policy.on_step(self.metrics, self.context())))
                recoveries = 0
            except Exception as exc:  # noqa: BLE001 - classified below
                if not is_comm_failure(exc) or recoveries >= MAX_RECOVERIES:
                    raise
                recoveries += 1
                self.recover(exc)
        if not self.left and not self.benched:
            self.strategy.flush(self.engine.params)
            if self.strategy.name != "sgd":
                sync.consensus(self.engine.model, self.engine.opt, self.comm)
            C.call(self.callbacks, "on_train_end", self.run_view)
            if self.ckpt is not None:
                self.checkpoint()
                self.ckpt.wait()

    def checkpoint(self) -> None:
        """Hand the state of the step just completed to the background writer (rank 0)."""
        s = None
        if self.engine.sharded:  # gathering the full state is a collective
            s = self.snap if self.snap is not None and self.snap["step"] == self.step \
                else self.state()
        if self.mem.rank != 0:
            return
        msd, osd = self.engine.fqn_state(s["engine"] if s is not None else None)
        extra = copy.deepcopy(self.extras())
        extra["sched"] = copy.deepcopy(self.engine.sched.state_dict()) \
            if self.engine.sched is not None else None
        plan = getattr(self.engine, "plan", None)
        self.ckpt.submit(msd, osd, extra, {"step": self.step, "epoch": self.epoch,
                                           "world": self.mem.world, "time": time.time(),
                                           "plan": plan.name if plan is not None else None})
