"""Settings of an adaptive run (`AdaptConfig`), validated with clear messages."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from weft.adapt.actions import STRATEGIES

BATCH_RULES = ("per_worker", "global")
from weft.errors import WeftError


class ConfigError(WeftError, ValueError):
    """An adaptive-training setting is invalid."""


@dataclass
class AdaptConfig:
    workers: int = 2            # initial number of workers
    min_workers: int = 1
    max_workers: int = 4
    epochs: int = 3
    max_steps: int | None = None  # stop earlier than `epochs` if set
    batch_size: int = 16        # per worker (initially; see batch_rule)
    batch_rule: str = "per_worker"  # what a resize keeps: the per-worker or the global batch
    lr: float | None = None     # None: the optimizer's own (the default SGD: 0.05)
    momentum: float = 0.9       # of the default SGD
    strategy: str = "sgd"       # sgd | sma | pair
    model: str = "mlp"          # mlp | cnn (digits)
    hidden: int = 64
    seed: int = 0
    monitor: bool = True        # noise scale / variance monitors
    ema_decay: float = 0.9
    noise_every: int = 5        # sma/pair: also all-reduce the gradient every N steps
    pg_timeout: float = 10.0    # seconds: bounds every collective -> failure detection
    join_timeout: float = 60.0  # seconds: bounds every membership wait
    heartbeat: float = 0.5      # seconds between heartbeats in the store
    heartbeat_timeout: float | None = None  # silent this long = dead (default max(10, 10 x hb))
    standby: int | None = None  # warm joiners kept per node (default: every free slot)
    log_samples: bool = False   # record every sample index each rank trained on
    progress_seconds: float = 5.0  # rank 0 logs a progress line at most this often (0: quiet)
    kill: list | None = None    # chaos testing: [step, wid] -> that worker SIGKILLs itself
    snapshot: bool = True       # keep an in-memory copy of the last completed step
    capacity_every: int = 5     # rank 0 reads the cluster's capacity every N steps (0: never)
    snapshot_every: int = 1     # plans: gather the full state in memory every N steps
    topology: str | None = None  # topology file/builder: collectives re-planned on it
    devices: list | None = None  # device (of `topology`) of each process slot on this machine
    algorithm: str = "auto"     # all-reduce on `topology`: auto (re-planned) or a fixed one
    checkpoint: str | None = None  # folder of the periodic checkpoint (DCP, atomic)
    checkpoint_every: int = 0   # steps between checkpoints (0: only at the end)
    resume: bool = False        # start from `checkpoint` (any world size)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, name: str, msg: str):
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {msg}")

        for name in ("workers", "min_workers", "max_workers", "epochs", "batch_size", "hidden",
                     "noise_every", "snapshot_every"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name,
                 "must be an integer >= 1")
        need(self.min_workers <= self.workers <= self.max_workers, "workers",
             f"must lie in [min_workers={self.min_workers}, max_workers={self.max_workers}]")
        need(self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
             "max_steps", "must be null or an integer >= 1")
        for name in ("lr", "pg_timeout", "join_timeout", "heartbeat", "heartbeat_timeout"):
            v = getattr(self, name)
            if v is None and name in ("lr", "heartbeat_timeout"):
                continue
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 and v > 0, name, "must be a positive number")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        need(self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}")
        need(self.model in ("mlp", "cnn"), "model", "must be 'mlp' or 'cnn'")
        need(self.batch_rule in BATCH_RULES, "batch_rule", f"must be one of {', '.join(BATCH_RULES)}")
        need(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
             "checkpoint_every", "must be an integer >= 0")
        need(not self.resume or bool(self.checkpoint), "resume", "needs checkpoint: FOLDER")
        need(self.devices is None or (isinstance(self.devices, (list, tuple)) and all(
            isinstance(d, str) and d for d in self.devices)), "devices",
             "must be null or a list of device names")
        if self.algorithm != "auto":
            from weft.collectives.autotune import check_algorithm

            try:
                check_algorithm(self.algorithm)
            except ValueError as exc:
                need(False, "algorithm", f"{exc} (or auto)")
        need(self.standby is None or (isinstance(self.standby, int) and self.standby >= 0),
             "standby", "must be null or an integer >= 0")
        need(isinstance(self.capacity_every, int) and self.capacity_every >= 0,
             "capacity_every", "must be an integer >= 0")
        need(self.kill is None or (isinstance(self.kill, (list, tuple)) and len(self.kill) == 2),
             "kill", "must be [step, wid]")

    @property
    def hb_timeout(self) -> float:
        """Seconds without a heartbeat after which a worker or node counts as dead (generous:
        a loaded machine delays heartbeat threads by seconds; agents announce the deaths of
        their own children at once, so this only bounds noticing a lost machine)."""
        if self.heartbeat_timeout is not None:
            return float(self.heartbeat_timeout)
        return max(10.0, 10 * self.heartbeat)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "train") -> "AdaptConfig":
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
        try:
            return cls(**d)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def replace(self, **kw) -> "AdaptConfig":
        return dataclasses.replace(self, **kw)
