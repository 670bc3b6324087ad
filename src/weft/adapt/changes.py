"""What a worker does when the world changes: start or resume, resize, recover from a
failure, re-plan (a mixin of weft.adapt.trainer.Trainer).

Every change ends in a new process group with the same state on every member and a
`replan` event: the all-reduce algorithm chosen for the new members (weft.adapt.replan),
the batch for the new world (`batch_rule`: the per-worker batch kept, or the global one),
and the predicted step time next to the measured one before (and, filled in a few
steps later, after) the change.
"""

from __future__ import annotations

import logging
import math
import os
import time

import torch.distributed as dist

from weft.adapt import sync
from weft.adapt.replan import CommPlan, predict_step, ring_factor
from weft.adapt.snapshot import copy_state

log = logging.getLogger("weft.adapt")


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1e3:.1f} ms"


class Changes:
    # -- entering a membership epoch ------------------------------------------------
    def _entered(self, why: str) -> None:
        """A new group was formed: rebuild what depends on it (the plan's mesh, the
        collectives for these members)."""
        from weft.adapt.guard import GuardedCommunicator

        self.capacity = 0  # re-measured at the next step
        e, store = self.mem.epoch, self.mem.store
        self._failed = lambda: store.check([f"decide/{e}"])
        self.engine.bind(self.mem.rank, self.mem.world)
        self.old_plan = self.comm_plan
        if self.engine.sharded:
            self.comm_plan = CommPlan("plan")
            self.comm = GuardedCommunicator(self._failed, self.cfg.pg_timeout)
        else:
            self.comm_plan = self.replanner.plan(self.mem.members, self.grad_bytes())
            self.comm = self.replanner.communicator(self.comm_plan, self._failed,
                                                    self.cfg.pg_timeout)
        self.memberships.append({"epoch": self.mem.epoch, "rank": self.mem.rank,
                                 "world": self.mem.world, "pid": os.getpid(), "step": self.step,
                                 "why": why, "local_params": self.engine.local_numel()})
        self.fresh = True

    def broadcast_state(self, src: int = 0, state: dict | None = None) -> None:
        """Every member of the current group ends with `src`'s state (under a plan, `src`
        passes the full state gathered before; it is loaded into the rebuilt model)."""
        if self.mem.rank == src and state is None:
            state = self.state()
        obj = [state if self.mem.rank == src else None]
        if self.mem.world > 1:
            dist.broadcast_object_list(obj, src=src)
        self.load(copy_state(obj[0]) if self.mem.rank == src else obj[0])
        self.memberships[-1]["digest"] = self.engine.digest()

    def start(self) -> None:
        """Membership epoch 0: resume from the checkpoint, or make the replicas equal."""
        self._entered("start")
        if self.cfg.resume:
            self.resume()
        elif not self.engine.sharded:  # whatever the factory does, replicas start equal
            self.broadcast_state(0)
        self.log_replan("start", 0)
        if self.cfg.snapshot:
            self.snap = copy_state(self.state())

    def resume(self) -> None:
        from weft.adapt import durable

        obj = [None]
        if self.mem.rank == 0:
            m = durable.meta(self.cfg.checkpoint)
            obj = [(*durable.read(self.cfg.checkpoint, self.built.make_model,
                                  self.built.make_optimizer), m)]
        if self.mem.world > 1:
            dist.broadcast_object_list(obj, src=0)
        msd, osd, extra, m = obj[0]
        self.engine.load_fqn(msd, osd)
        if self.engine.sched is not None and extra.get("sched") is not None:
            self.engine.sched.load_state_dict(extra["sched"])
        self.load_extras(extra)
        self.memberships[-1]["digest"] = self.engine.digest()
        was, now = extra.get("policy_type"), type(self.policy).__qualname__
        self.event("resume", f"resumed from {self.cfg.checkpoint} at step {self.step} "
                   f"(written by {m['world']} worker(s), now {self.mem.world})"
                   + (f"; policy {now} starts afresh (the checkpoint's was {was})"
                      if was not in (None, now) else ""),
                   checkpoint_world=m["world"])

    # -- planned resize ---------------------------------------------------------
    def resize(self, n: int) -> None:
        t0, old = time.time(), self.mem.world
        self.strategy.flush(self.engine.params)
        if self.strategy.name != "sgd":
            sync.consensus(self.engine.model, self.engine.opt, self.comm)
        full = self.state() if self.engine.sharded else None  # gathered in the old world
        if not self.mem.resize(n):
            self.left = True
            self.event("leave", f"left at world {old} -> {n}")
            return
        self._entered("resize")
        self.broadcast_state(0, full if self.mem.rank == 0 else None)
        got = self.mem.world
        note = self.mem.note(self.mem.epoch)
        self.event("resize", f"{old} -> {got} workers" + (f" (asked {n}{': ' + note if note else ''})"
                                                          if got != n else ""),
                   old=old, new=got, asked=n, resize_s=time.time() - t0)
        self.resize_started = (t0, len(self.events) - 1)
        self.log_replan("resize", old)

    def _largest_fit(self, n: int) -> tuple[int, str]:
        """The largest world of at most `n` survivors the engine can run in, and why not
        all `n` (a plan's tp and pp degrees stay; only data-parallel replicas shrink)."""
        first = None
        for k in range(n, 0, -1):
            why = self.engine.check_world(k, f"{k} worker(s)")
            if why is None:
                return k, "" if k == n else f"{first}; kept {k}"
            first = first or why
        return 0, f"no group of at most {n} fits: {first}"

    def joined(self) -> None:
        """A standby assigned to the new epoch (or a benched worker taken back): rebuild
        for it and receive the state."""
        self.benched = False
        self._entered("join")
        self.broadcast_state(0)
        self.event("join", f"worker {self.wid} joined as rank {self.mem.rank}")

    # -- failure ----------------------------------------------------------------
    def recover(self, exc: BaseException) -> None:
        from weft.adapt.trainer import MAX_RECOVERIES, is_comm_failure

        t0, old, before = time.time(), self.mem.world, list(self.mem.members)
        self.strategy.reset()
        for attempt in range(MAX_RECOVERIES):  # a member may die while the group re-forms
            try:
                stays, _ = self.mem.recover(self._largest_fit)
                if stays:
                    self._entered("failure")
                break
            except Exception as again:  # noqa: BLE001 - classified below
                if not is_comm_failure(again) or attempt == MAX_RECOVERIES - 1:
                    raise
                log.warning("worker %d: recovery interrupted (%s); trying again", self.wid, again)
        benched = self.mem.benched(self.mem.epoch)
        lost = [w for w in before if w not in self.mem.members and w not in benched]
        note = self.mem.note(self.mem.epoch)
        if not stays:
            if not self.mem.members:
                raise RuntimeError(f"after losing worker(s) {lost}, no group of the "
                                   f"{len(benched)} survivor(s) can go on: {note}")
            # left out: wait as a warm standby (weft.adapt.worker takes it from here)
            self.benched = True
            self.event("bench", f"worker {self.wid} left out of the group after losing "
                       f"worker(s) {lost} ({note}); waiting as a standby")
            return
        steps = [None] * self.mem.world
        dist.all_gather_object(steps, self.snap["step"] if self.snap else -1)
        src = max(range(len(steps)), key=lambda r: (steps[r], -r))
        if steps[src] < 0:
            raise RuntimeError(f"no worker holds a snapshot to recover from after: {exc}")
        self.broadcast_state(src, self.snap if self.mem.rank == src else None)
        self.event("failure", f"lost worker(s) {lost}: {old} -> {self.mem.world} workers, "
                   f"resumed from step {self.step}"
                   + (f"; worker(s) {benched} wait as standbys ({note})" if benched else ""),
                   old=old, new=self.mem.world, lost=lost, benched=benched,
                   recover_s=time.time() - t0, error=str(exc)[:200])
        self.log_replan("failure", old)

    # -- re-planning -------------------------------------------------------------
    def replan(self, measure: bool) -> None:
        """A policy asked: re-measure the links (optionally), re-plan the collectives."""
        if self.engine.sharded:
            self.event("replan", "plan synchronises by itself; nothing re-planned")
            return
        self.strategy.flush(self.engine.params)
        measured = None
        if measure and self.mem.world > 1:
            measured = self.replanner.probe(self.mem.rank, self.mem.world,
                                            self.replanner.devices(self.mem.members))
        self.old_plan = self.comm_plan
        self.comm_plan = self.replanner.plan(self.mem.members, self.grad_bytes())
        self.comm = self.replanner.communicator(self.comm_plan, self._failed,
                                                self.cfg.pg_timeout)
        self.replans += 1
        self.log_replan("policy", self.mem.world, measured)

    def log_replan(self, why: str, old_world: int, measured: dict | None = None) -> None:
        """The `replan` event: identical on every member (computed from shared state)."""
        n, g = self.mem.world, self.global_size()
        local = math.ceil(g / n)
        new, old = self.comm_plan, self.old_plan
        comm = new.predicted_s
        before = [s for s, _ in self.recent[-4:]]
        if n == 1:
            comm = 0.0
        elif comm is None and self.recent and old_world > 1:  # gloo: scale the measured time
            comm = (sum(c for _, c in self.recent[-4:]) / len(self.recent[-4:])
                    * ring_factor(n) / ring_factor(old_world))
        kept = self.replanner.kept(old, new, self.grad_bytes())
        same = old.algorithm == new.algorithm
        if same and (kept is None or new.predicted_s is None or kept <= new.predicted_s * 1.001):
            kept = None  # nothing changed
        pred = predict_step(self.compute_ps, local, comm)
        measured_before = sum(before) / len(before) if before else None
        detail = (f"{why}: {old_world} -> {n} workers; all-reduce {old.algorithm} -> "
                  f"{new.algorithm}{' (re-packed)' if same and kept is not None else ''} "
                  f"(predicted {_ms(comm)}"
                  + (f"; {_ms(kept)} had the old {old.algorithm} been kept"
                     if kept is not None else "")
                  + f"); batch {g} ({local}/worker, rule {self.cfg.batch_rule}); step "
                  f"predicted {_ms(pred)}, measured before {_ms(measured_before)}")
        self.event("replan", detail, why=why, algorithm=new.algorithm, old_algorithm=old.algorithm,
                   predicted_comm_s=comm, predicted_comm_kept_s=kept, predicted_step_s=pred,
                   measured_before_s=measured_before, alternatives=dict(new.alternatives),
                   devices=new.devices, measured=measured, global_batch=g)
        self.after.append((len(self.events) - 1, self.step + 2, []))
