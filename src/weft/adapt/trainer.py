"""The adaptive training loop that runs in every worker process.

Per step: take this rank's slice of the global epoch permutation, forward /
backward, synchronise with the current strategy (statistics for the
monitors ride along), update the metrics, keep an in-memory snapshot of the
completed step, then run the policy and apply its (validated) actions at
the step boundary. A failed collective triggers recovery: survivors form a
new group and continue from the most advanced survivor's last completed step.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import time

import torch
import torch.distributed as dist
from torch import nn

from weft.adapt import actions as A
from weft.adapt import sync
from weft.adapt.config import AdaptConfig
from weft.adapt.monitors import Monitors, pack
from weft.adapt.policy import Context, as_actions, to_policy
from weft.adapt.guard import GuardedCommunicator, PeerFailure
from weft.adapt.membership import MemberLost
from weft.adapt.sharding import EpochSharder
from weft.collectives.communicator import TorchCommunicator

log = logging.getLogger("weft.adapt")
MAX_RECOVERIES = 8


def is_comm_failure(exc: BaseException) -> bool:
    """A collective or store failed (a peer died or timed out), not a bug in the model."""
    if isinstance(exc, (PeerFailure, MemberLost, getattr(dist, "DistError", PeerFailure))):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in msg for s in ("gloo", "connection", "timed out", "timeout", "closed", "peer",
                           "socket", "broken pipe", "reset"))


class Trainer:
    def __init__(self, cfg: AdaptConfig, model: nn.Module, dataset, policy, membership, wid: int):
        self.cfg, self.model, self.wid, self.mem = cfg, model, wid, membership
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum)
        self.x, self.y = dataset.tensors
        self.sharder = EpochSharder(len(self.x), cfg.seed)
        self.policy = to_policy(policy)
        self.monitors = Monitors(cfg.ema_decay, cfg.monitor)
        self.strategy = sync.make(cfg.strategy)
        self.comm = TorchCommunicator()
        self.step = self.epoch = self.consumed = 0
        self.batch_size = cfg.batch_size
        self.last_step_time = 0.0
        self.history: list[dict] = []
        self.events: list[dict] = []
        self.samples: list[tuple[int, list[int]]] = []
        self.memberships: list[dict] = []
        self.metrics: dict = {}
        self.capacity = 0  # workers the live nodes can host; 0 = unknown (after a resize)
        self.snap: dict | None = None
        self.resize_started: float | None = None
        self.left = False

    # -- state ---------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def state(self) -> dict:
        pol = self.policy.state_dict() if hasattr(self.policy, "state_dict") else {}
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                "epoch": self.epoch, "consumed": self.consumed, "batch_size": self.batch_size,
                "strategy": self.strategy.name, "round": getattr(self.strategy, "round", 0),
                "monitors": self.monitors.state_dict(), "policy": pol,
                "last_step_time": self.last_step_time}

    def load(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.step, self.epoch, self.consumed = s["step"], s["epoch"], s["consumed"]
        self.batch_size, self.last_step_time = s["batch_size"], s["last_step_time"]
        if self.strategy.name != s["strategy"]:
            self.strategy = sync.make(s["strategy"])
        self.strategy.reset()
        if hasattr(self.strategy, "round"):
            self.strategy.round = s["round"]
        self.monitors.load_state_dict(s["monitors"])
        if s["policy"] and hasattr(self.policy, "load_state_dict"):
            self.policy.load_state_dict(s["policy"])

    def broadcast_state(self, src: int = 0, state: dict | None = None) -> None:
        """Every member of the current group ends with `src`'s state."""
        obj = [state if state is not None else self.state()] if self.mem.rank == src else [None]
        if self.mem.world > 1:
            dist.broadcast_object_list(obj, src=src)
        self.load(copy.deepcopy(obj[0]) if self.mem.rank == src else obj[0])

    def _entered(self, why: str) -> None:
        self.capacity = 0  # re-measured at the next step
        e, store = self.mem.epoch, self.mem.store
        self.comm = GuardedCommunicator(lambda: store.check([f"decide/{e}"]), self.cfg.pg_timeout)
        self.memberships.append({"epoch": self.mem.epoch, "rank": self.mem.rank,
                                 "world": self.mem.world, "pid": os.getpid(), "step": self.step,
                                 "why": why})

    def event(self, kind: str, detail: str, **kw) -> None:
        e = {"step": self.step, "kind": kind, "detail": detail, "world": self.mem.world, **kw}
        self.events.append(e)
        if self.mem.rank == 0 or kind == "rejected":
            log.info("step %d: %s: %s", self.step, kind, detail)

    def context(self) -> Context:
        return Context(self.step, self.epoch, self.mem.world, self.batch_size, self.lr,
                       self.strategy.name, self.cfg.min_workers, self.cfg.max_workers,
                       len(self.x), self.mem.epoch, self.capacity)

    # -- one step --------------------------------------------------------
    def train_step(self) -> None:
        t0 = time.perf_counter()
        rank, world = self.mem.rank, self.mem.world
        idx, total = self.sharder.step_indices(self.epoch, self.consumed, rank, world,
                                               self.batch_size)
        for p in self.params:
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
        loss_sum = 0.0
        if len(idx):
            loss = nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx],
                                               reduction="sum")
            (loss / len(idx)).backward()
            loss_sum = float(loss.detach())
        measure = self.cfg.monitor and (self.strategy.name == "sgd"
                                        or self.step % self.cfg.noise_every == 0)
        cap = 0.0
        if rank == 0 and self.cfg.capacity_every and (
                self.capacity == 0 or self.step % self.cfg.capacity_every == 0):
            cap = float(self.mem.capacity(self.cfg.max_workers))
        stats = pack(0.0, loss_sum, len(idx), self.last_step_time, cap)
        reduced, sq_big = self.strategy.apply(self.params, self.opt, self.comm, len(idx) / total,
                                              stats, measure)
        equal = total == world * self.batch_size
        self.metrics = self.monitors.update(reduced, sq_big, equal)
        self.capacity = int(self.metrics.get("capacity", self.capacity))
        if self.capacity:
            self.metrics["capacity"] = float(self.capacity)
        if self.cfg.log_samples:
            self.samples.append((self.epoch, idx.tolist()))
        self.consumed += total
        self.step += 1
        if self.consumed >= len(self.x):
            self.epoch, self.consumed = self.epoch + 1, 0
        self.last_step_time = time.perf_counter() - t0
        self.history.append({"step": self.step, "loss": self.metrics["loss"], "world": world,
                             "strategy": self.strategy.name, "batch_size": self.batch_size,
                             "lr": self.lr, "noise_scale": self.metrics.get("noise_scale"),
                             "throughput": self.metrics.get("throughput"),
                             "step_time": self.last_step_time, "time": time.time()})
        if self.resize_started is not None:
            t0, i = self.resize_started
            self.events[i]["latency_s"] = time.time() - t0
            self.resize_started = None

    # -- actions -------------------------------------------------------------
    def apply_actions(self, actions: list) -> None:
        resize = None
        for a in actions:
            msg = A.validate(a, self.context())
            if msg:
                self.event("rejected", f"invalid action rejected: {msg}")
                continue
            if isinstance(a, A.Resize):
                resize = a if a.workers != self.mem.world else None
            elif isinstance(a, A.SetLR):
                self._set_lr(float(a.lr))
                self.event("lr", f"lr -> {a.lr:g}")
            elif isinstance(a, A.SetBatchSize) and a.per_worker != self.batch_size:
                ratio = a.per_worker / self.batch_size
                self.batch_size = a.per_worker
                if a.scale_lr:
                    self._set_lr(self.lr * (ratio if a.scale_lr == "linear" else math.sqrt(ratio)))
                self.event("batch", f"batch/worker -> {a.per_worker}, lr -> {self.lr:.4g}")
            elif isinstance(a, A.SwitchStrategy) and a.strategy != self.strategy.name:
                old = self.strategy.name
                self.strategy.flush(self.params)
                sync.consensus(self.model, self.opt, self.comm)
                self.strategy = sync.make(a.strategy)
                self.event("switch", f"{old} -> {a.strategy}", strategy=a.strategy)
        if resize is not None:
            self.resize(resize.workers)

    def _set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr

    def resize(self, n: int) -> None:
        t0, old = time.time(), self.mem.world
        self.strategy.flush(self.params)
        if self.strategy.name != "sgd":
            sync.consensus(self.model, self.opt, self.comm)
        if not self.mem.resize(n):
            self.left = True
            self.event("leave", f"left at world {old} -> {n}")
            return
        self._entered("resize")
        self.broadcast_state(0)
        got = self.mem.world
        self.event("resize", f"{old} -> {got} workers" + (f" (asked {n})" if got != n else ""),
                   old=old, new=got, asked=n, resize_s=time.time() - t0)
        self.resize_started = (t0, len(self.events) - 1)

    def recover(self, exc: BaseException) -> None:
        t0, old, before = time.time(), self.mem.world, list(self.mem.members)
        self.strategy.reset()
        for attempt in range(MAX_RECOVERIES):  # a member may die while the group re-forms
            try:
                stays, _ = self.mem.recover()
                break
            except Exception as again:  # noqa: BLE001 - classified below
                if not is_comm_failure(again) or attempt == MAX_RECOVERIES - 1:
                    raise
                log.warning("worker %d: recovery interrupted (%s); trying again", self.wid, again)
        lost = [w for w in before if w not in self.mem.members]
        if not stays:
            raise RuntimeError(f"worker {self.wid} was dropped from the group after: {exc}")
        self._entered("failure")
        steps = [None] * self.mem.world
        dist.all_gather_object(steps, self.snap["step"] if self.snap else -1)
        src = max(range(len(steps)), key=lambda r: (steps[r], -r))
        self.broadcast_state(src, self.snap if self.mem.rank == src else None)
        self.event("failure", f"lost worker(s) {lost}: {old} -> {self.mem.world} workers, "
                   f"resumed from step {self.step}", old=old, new=self.mem.world,
                   lost=lost, recover_s=time.time() - t0, error=str(exc)[:200])

    # -- the loop --------------------------------------------------------
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs or (self.cfg.max_steps is not None
                                                 and self.step >= self.cfg.max_steps)

    def run(self) -> None:
        recoveries = 0
        while not self.done() and not self.left:
            if self.cfg.kill and [self.step, self.wid] == list(self.cfg.kill):
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                self.train_step()
                if self.cfg.snapshot:
                    self.snap = copy.deepcopy(self.state())
                self.apply_actions(as_actions(self.policy.on_step(self.metrics, self.context())))
                recoveries = 0
            except Exception as exc:  # noqa: BLE001 - classified below
                if not is_comm_failure(exc) or recoveries >= MAX_RECOVERIES:
                    raise
                recoveries += 1
                self.recover(exc)
        if not self.left:
            self.strategy.flush(self.params)
            if self.strategy.name != "sgd":
                sync.consensus(self.model, self.opt, self.comm)
