"""The policy API: `on_step(metrics, ctx) -> actions`, and the policies weft ships.

A policy is any object with `on_step(metrics, ctx)` or a plain function
`f(metrics, ctx)`; it returns None, one action or a list of actions
(`weft.adapt.actions`). It runs on every rank at every step boundary with
the same, globally reduced metrics, so it must be a deterministic function
of (metrics, ctx, its own state). Stateful policies may define
`state_dict()/load_state_dict()`; weft sends that state to joining workers.

    class Halve:
        def on_step(self, metrics, ctx):
            if ctx.step == 100:
                return [SetLR(ctx.lr / 2), Resize(ctx.world * 2)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from weft.adapt.actions import Replan, Resize, SetBatchSize, SwitchStrategy


@dataclass(frozen=True)
class Context:
    """What a policy may read besides the metrics (all ranks see the same values)."""

    step: int  # steps completed so far
    epoch: int
    world: int
    batch_size: int  # per worker
    lr: float
    strategy: str
    min_workers: int
    max_workers: int
    dataset_size: int
    membership: int = 0  # membership epoch (bumps on every resize or failure)
    capacity: int = 0  # workers the live nodes can host now (0: not measured yet)
    global_batch: int = 0  # samples per step over all workers (0: batch_size x world)
    batch_rule: str = "per_worker"  # what a resize keeps: per_worker or global
    replans: int = 0  # collective re-plans so far (bumps on every re-plan)
    algorithm: str = "gloo"  # the all-reduce in use

    def __post_init__(self):
        if not self.global_batch:
            object.__setattr__(self, "global_batch", self.batch_size * self.world)


def as_actions(result: Any) -> list:
    if result is None:
        return []
    if isinstance(result, (list, tuple)):
        return list(result)
    return [result]


class Policy:
    """Base class (optional): override `on_step`; state is this object's __dict__."""

    def on_step(self, metrics: dict, ctx: Context):
        return None

    def state_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if not callable(v)}

    def load_state_dict(self, d: dict) -> None:
        vars(self).update(d)


class FunctionPolicy(Policy):
    def __init__(self, fn: Callable[[dict, Context], Any]):
        self.fn = fn

    def on_step(self, metrics, ctx):
        return self.fn(metrics, ctx)

    def state_dict(self) -> dict:
        return {}


class Compose(Policy):
    """Runs several policies in order and concatenates their actions."""

    def __init__(self, policies: Iterable):
        self.policies = [p if hasattr(p, "on_step") else FunctionPolicy(p) for p in policies]

    def on_step(self, metrics, ctx):
        out = []
        for p in self.policies:
            out += as_actions(p.on_step(metrics, ctx))
        return out

    def state_dict(self) -> dict:
        return {"policies": [p.state_dict() if hasattr(p, "state_dict") else {}
                             for p in self.policies]}

    def load_state_dict(self, d: dict) -> None:
        for p, s in zip(self.policies, d["policies"]):
            if hasattr(p, "load_state_dict"):
                p.load_state_dict(s)


def to_policy(p: Any) -> Policy:
    if p is None:
        return Compose([])
    if isinstance(p, (list, tuple)):
        return Compose(p)
    if hasattr(p, "on_step"):
        return p
    if callable(p):
        return FunctionPolicy(p)
    raise TypeError(f"a policy must have on_step(metrics, ctx) or be callable, got {p!r}")


@dataclass
class AdaptiveBatchSize(Policy):
    """Grow the global batch towards the measured noise scale (McCandlish et al.).

    Every `every` steps: target global batch = noise_scale, clamped to
    [min_per_worker, max_per_worker] per worker and rounded to a power of two;
    changed only when it differs from the current batch by at least
    `hysteresis`x. The LR follows the `scale_lr` rule ("linear" or "sqrt").
    """

    min_per_worker: int = 8
    max_per_worker: int = 128
    every: int = 10
    hysteresis: float = 1.5
    scale_lr: str | None = "linear"
    warmup: int = 10

    def on_step(self, metrics, ctx):
        ns = metrics.get("noise_scale")
        if ns is None or not math.isfinite(ns) or ctx.step < self.warmup or ctx.step % self.every:
            return None
        per = max(1.0, ns / ctx.world)
        per = 2 ** round(math.log2(per))
        per = int(min(self.max_per_worker, max(self.min_per_worker, per)))
        ratio = per / ctx.batch_size
        if per != ctx.batch_size and max(ratio, 1 / ratio) >= self.hysteresis:
            return SetBatchSize(per, self.scale_lr)
        return None


@dataclass
class SwitchOnNoise(Policy):
    """Switch sync strategy once the noise scale exceeds `threshold`.

    Early in training the gradient noise scale is small, so cheap local
    steps plus model averaging ('sma', 'pair') lose little; when it grows,
    exact gradient averaging ('sgd') makes better use of the large batch.
    """

    threshold: float = 100.0
    to: str = "sgd"
    warmup: int = 10
    fired: bool = False

    def on_step(self, metrics, ctx):
        ns = metrics.get("noise_scale")
        if self.fired or ctx.step < self.warmup or ns is None or not ns > self.threshold \
                or ctx.strategy == self.to:
            return None
        self.fired = True
        return SwitchStrategy(self.to)


@dataclass
class ScheduleResize(Policy):
    """Resize at fixed steps: {step: workers}."""

    schedule: dict[int, int] = field(default_factory=dict)

    def on_step(self, metrics, ctx):
        w = self.schedule.get(ctx.step)
        return Resize(w) if w is not None and w != ctx.world else None


@dataclass
class ThroughputScaler(Policy):
    """Scale out one worker at a time while it raises throughput by >= `min_gain`x.

    Every `interval` steps: if the last scale-out did not pay off, scale back
    in by one and stop exploring; otherwise add a worker (up to max_workers).
    """

    interval: int = 20
    min_gain: float = 1.1
    before: float | None = None
    done: bool = False

    def on_step(self, metrics, ctx):
        tp = metrics.get("throughput")
        if self.done or tp is None or not math.isfinite(tp) or ctx.step == 0 or ctx.step % self.interval:
            return None
        if self.before is not None and tp < self.min_gain * self.before:
            self.done = True
            return Resize(ctx.world - 1) if ctx.world > ctx.min_workers else None
        if ctx.world >= ctx.max_workers:
            self.done = True
            return None
        self.before = tp
        return Resize(ctx.world + 1)


@dataclass
class FollowCapacity(Policy):
    """Use the machines that are there: when the cluster's capacity (free process slots on
    live nodes, e.g. a node that just joined) differs from the world size for `patience`
    consecutive steps, resize to it (within [min_workers, max_workers])."""

    patience: int = 5
    seen: int = 0

    def on_step(self, metrics, ctx):
        target = min(max(ctx.capacity, ctx.min_workers), ctx.max_workers)
        if ctx.capacity <= 0 or target == ctx.world:
            self.seen = 0
            return None
        self.seen += 1
        if self.seen < self.patience:
            return None
        self.seen = 0
        return Resize(target)


@dataclass
class ReplanOnSlowdown(Policy):
    """Re-measure the links and re-plan the collectives when synchronising is slower than it
    should be: once the `settle` steps after a change have set its level (their median
    `comm_time`), (a) that level is over `factor` x the plan's prediction (`comm_predicted`,
    with a topology: the links are slower than the topology says; checked once per
    membership), or (b) later steps stay over `factor` x that level for `patience` steps in
    a row (a link became slow or congested). After a re-plan the level is measured afresh,
    so a slowdown that no algorithm avoids does not re-plan again and again."""

    factor: float = 1.5
    patience: int = 3
    settle: int = 5
    key: list = field(default_factory=list)
    seen: list = field(default_factory=list)
    baseline: float | None = None
    over: int = 0
    checked: int = -1  # the membership whose level was compared with the prediction

    def on_step(self, metrics, ctx):
        c = metrics.get("comm_time")
        if c is None or not math.isfinite(c) or ctx.world < 2:
            return None
        key = [ctx.membership, ctx.replans]
        if key != self.key:
            self.key, self.seen, self.baseline, self.over = key, [], None, 0
        if self.baseline is None:
            self.seen.append(c)
            if len(self.seen) <= self.settle + 1:  # the first one straddles the change
                return None
            tail = sorted(self.seen[1:])
            self.baseline = tail[len(tail) // 2]
            pred = metrics.get("comm_predicted")
            if self.checked != ctx.membership and pred and self.baseline > self.factor * pred:
                self.checked = ctx.membership
                return Replan(measure=True)
            self.checked = ctx.membership
            return None
        self.over = self.over + 1 if c > self.factor * self.baseline else 0
        if self.over < self.patience:
            return None
        self.over = 0
        return Replan(measure=True)
