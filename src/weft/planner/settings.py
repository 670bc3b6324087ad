"""The planner's settings: what the runtime and the machine cost beyond the profile, as one value.

    s = PlannerSettings(cpu_copy_bw=2.5e9, action_overhead_s=1.2e-4)
    plan = partition(profile, topology, workers=2, settings=s)
    predict(plan, profile, topology, "1f1b", settings=s.replace(compute_scale=1.3))

Every field is optional; the defaults charge nothing beyond the profile and the topology.

* ``cpu_copy_bw`` (bytes/s, > 0, or None): the rate at which a rank's CPU copies a message
  (loopback gloo, where sender and receiver copy every message); the partitioner and
  `predict` charge the copies to the ranks that send and receive.
* ``action_overhead_s`` (s, >= 0): the runtime's own cost per schedule action (F, B, send,
  receive), measured by `weft.planner.overhead.calibrate`.
* ``step_overhead_s`` (s, >= 0): the runtime's cost per step (optimizer, flush); `predict`
  only (the partitioner compares stages within one step).
* ``latency_s`` (s, >= 0, or None): the one-way latency of a message as the runtime sees
  it; `predict` only; None uses the topology's link latency.
* ``allreduce_bw`` (bytes/s, > 0, or None): the measured ring bandwidth of the runtime's
  gradient all-reduce; replaces the link and copy terms of replicated stages.
* ``compute_scale`` (> 0): multiplies every profiled forward/backward time (the measured
  slowdown of compute with every rank busy, `weft.planner.contention`).

Plans keep the settings they were made with in ``extra["settings"]`` (`to_dict`,
`from_plan`); plans written before this field existed (only ``extra["compute_scale"]``)
read with the other fields at their defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from weft.errors import PlanError

# field -> (may be None, must be > 0 (else >= 0), may be +inf)
_RULES = {
    "cpu_copy_bw": (True, True, True),
    "action_overhead_s": (False, False, False),
    "step_overhead_s": (False, False, False),
    "latency_s": (True, False, False),
    "allreduce_bw": (True, True, True),
    "compute_scale": (False, True, False),
}


def check_setting(name: str, value, label: str | None = None) -> float | None:
    """`value` as the settings field `name` wants it (a float, or None where allowed), or a
    PlanError naming `label` (default `name`: e.g. the CLI flag it came from)."""
    optional, positive, infinite = _RULES[name]
    label = label or name
    if value is None and optional:
        return None
    if positive:
        what = "a number > 0 (or inf)" if infinite else "a finite number > 0"
    else:
        what = "a finite number >= 0"
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise PlanError(f"{label} must be {what}, got {value!r}") from None
    ok = not math.isnan(v) and (v > 0 if positive else v >= 0) and (infinite or math.isfinite(v))
    if not ok:
        raise PlanError(f"{label} must be {what}, got {value!r}")
    return v


@dataclass(frozen=True)
class PlannerSettings:
    """The six calibration numbers the partitioner and `predict` charge (see module doc)."""

    cpu_copy_bw: float | None = None
    action_overhead_s: float = 0.0
    step_overhead_s: float = 0.0
    latency_s: float | None = None
    allreduce_bw: float | None = None
    compute_scale: float = 1.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check_setting(f.name, getattr(self, f.name)))

    def replace(self, **changes) -> "PlannerSettings":
        """A copy with `changes` (validated like the constructor)."""
        unknown = set(changes) - set(_RULES)
        if unknown:
            raise PlanError(f"planner settings have no field {sorted(unknown)[0]!r} (fields: "
                            f"{', '.join(_RULES)})")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d, source: str = "settings") -> "PlannerSettings":
        """Settings from `to_dict`'s form; an unknown or bad field is a PlanError naming
        `source` and the field."""
        if not isinstance(d, dict):
            raise PlanError(f"{source} must be a mapping of planner settings, got "
                            f"{type(d).__name__}")
        unknown = set(d) - set(_RULES)
        if unknown:
            raise PlanError(f"{source}: unknown planner setting {sorted(unknown)[0]!r} "
                            f"(fields: {', '.join(_RULES)})")
        for name, value in d.items():
            check_setting(name, value, f"{source}.{name}")
        return cls(**d)

    @classmethod
    def from_plan(cls, plan) -> "PlannerSettings":
        """The settings a plan (`weft.parallel.pipeline.stages.PipelinePlan`) was made with:
        ``extra["settings"]``, or for older plans ``extra["compute_scale"]`` alone."""
        extra = plan.extra or {}
        if "settings" in extra:
            return cls.from_dict(extra["settings"], "plan extra.settings")
        if "compute_scale" in extra:
            return cls(compute_scale=check_setting("compute_scale", extra["compute_scale"],
                                                   "plan extra.compute_scale"))
        return cls()


UNCALIBRATED = PlannerSettings()  # the default: nothing charged beyond profile and topology
