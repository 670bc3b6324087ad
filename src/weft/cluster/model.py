"""Scheduling model: jobs, clusters of accelerator types, and the error type."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from weft.errors import WeftError

# Default on-demand prices in $/accelerator-hour, used by the min_cost policy
# when a cluster spec gives none (public cloud list prices for one GPU).
DEFAULT_PRICES = {"v100": 3.06, "p100": 1.46, "k80": 0.90}


class ClusterError(WeftError, ValueError):
    """A trace, throughput table, cluster spec or jobs spec is malformed."""


@dataclass
class Job:
    """One training job.

    ``job_type`` names a row of the throughput table (Gavel's model name);
    ``scale_factor`` is the number of accelerators it needs at once;
    ``total_steps`` its length; ``arrival_time`` in seconds; ``slo`` is a
    deadline in seconds after arrival (``None`` for none). ``task`` is what the
    executor runs (a ``tasks.ModelTask`` or ``tasks.CommandTask``; None: the
    default model); ``trace_command`` is a Gavel trace's command column, kept
    only to write the trace back. ``scale_factors`` lists the numbers of
    accelerators the job could run at (an elastic job: e.g. 1, 2, 4, 8; default
    just ``scale_factor``); policies see them as ``Problem.scale_options`` with
    the throughput at each (``Problem.T_options``), for Sia-style allocation.
    """

    job_id: int
    job_type: str
    scale_factor: int
    total_steps: float
    arrival_time: float = 0.0
    priority_weight: float = 1.0
    slo: float | None = None
    trace_command: str = ""
    name: str = ""
    task: Any = None
    scale_factors: tuple[int, ...] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_type, self.scale_factor)

    @property
    def scale_options(self) -> tuple[int, ...]:
        return self.scale_factors or (self.scale_factor,)

    def __post_init__(self) -> None:
        if self.scale_factor < 1:
            raise ClusterError(f"job {self.job_id}: scale_factor must be >= 1, got {self.scale_factor}")
        if not (self.total_steps > 0) or not math.isfinite(self.total_steps):
            raise ClusterError(f"job {self.job_id}: total_steps must be > 0, got {self.total_steps}")
        if self.arrival_time < 0 or not math.isfinite(self.arrival_time):
            raise ClusterError(f"job {self.job_id}: arrival_time must be >= 0, got {self.arrival_time}")
        if self.scale_factors is not None:
            opts = tuple(sorted({int(s) for s in self.scale_factors}))
            if not opts or opts[0] < 1 or self.scale_factor not in opts:
                raise ClusterError(f"job {self.job_id}: scale_factors {list(self.scale_factors)} must be >= 1 "
                                   f"and include scale_factor {self.scale_factor}")
            self.scale_factors = opts
        if not (self.priority_weight > 0):
            raise ClusterError(f"job {self.job_id}: priority_weight must be > 0, got {self.priority_weight}")


@dataclass
class Cluster:
    """Accelerator types with counts, servers of ``per_server`` slots each, prices."""

    counts: dict[str, int]
    per_server: dict[str, int] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.counts:
            raise ClusterError("cluster: needs at least one accelerator type")
        for t, c in self.counts.items():
            if not isinstance(c, int) or c < 0:
                raise ClusterError(f"cluster: count of {t!r} must be a non-negative integer, got {c!r}")
        for t in self.counts:
            self.per_server.setdefault(t, min(4, max(1, self.counts[t])))
            self.prices.setdefault(t, DEFAULT_PRICES.get(t, 1.0))

    @property
    def types(self) -> list[str]:
        return list(self.counts)

    @classmethod
    def parse(cls, text: str) -> Cluster:
        """Parse Gavel's ``"36:36:36"`` (V100:P100:K80) or ``"v100=4,k80=2"``."""
        try:
            if "=" in text:
                pairs = [p.split("=") for p in text.split(",") if p.strip()]
                return cls({k.strip(): int(v) for k, v in pairs})
            parts = [int(p) for p in text.split(":")]
            return cls(dict(zip(["v100", "p100", "k80"], parts)))
        except ValueError as exc:
            raise ClusterError(f"cluster {text!r}: use 'V100:P100:K80' counts or 'type=count,...' ({exc})") from None
