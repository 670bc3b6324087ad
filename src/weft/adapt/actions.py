"""Actions a policy may return, and their validation.

An invalid action (0 workers, a negative batch, an unknown strategy...) is
*rejected*: `validate` returns a message naming the problem, the training
loop logs it as a `rejected` event and carries on unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

from weft.errors import WeftError

STRATEGIES = ("sgd", "sma", "pair")


class PolicyError(WeftError, ValueError):
    """A policy (file) is malformed."""


@dataclass(frozen=True)
class Resize:
    """Change the number of workers (added or removed without restarting the others)."""

    workers: int


@dataclass(frozen=True)
class SetBatchSize:
    """Per-worker batch size; `scale_lr` rescales the LR by new/old global batch (linear rule)."""

    per_worker: int
    scale_lr: str | None = "linear"  # "linear", "sqrt" or None


@dataclass(frozen=True)
class SetLR:
    lr: float


@dataclass(frozen=True)
class SwitchStrategy:
    """'sgd' (all-reduce gradients), 'sma' (synchronous model averaging), 'pair' (peer averaging)."""

    strategy: str


@dataclass(frozen=True)
class Replan:
    """Re-plan the collectives for the current members now (`measure`: first re-measure the
    links between them with timed point-to-point transfers, e.g. after a slowdown)."""

    measure: bool = True


Action = Union[Resize, SetBatchSize, SetLR, SwitchStrategy, Replan]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(action: Any, ctx: Any) -> str | None:
    """None if `action` is acceptable in context `ctx`, else a message saying why not."""
    if isinstance(action, Resize):
        w = action.workers
        if not _is_int(w):
            return f"Resize(workers={w!r}): workers must be an integer"
        if w < ctx.min_workers:
            return f"Resize(workers={w}): at least {ctx.min_workers} worker(s) required"
        if w > ctx.max_workers:
            return f"Resize(workers={w}): more than max_workers={ctx.max_workers}"
        rule = getattr(ctx, "batch_rule", "per_worker")
        if rule == "per_worker" and w * ctx.batch_size > ctx.dataset_size:
            return (f"Resize(workers={w}): global batch {w * ctx.batch_size} ({w} x "
                    f"{ctx.batch_size}) exceeds the dataset ({ctx.dataset_size} samples)")
        if rule == "global" and w > ctx.global_batch:
            return (f"Resize(workers={w}): more workers than samples in the global batch "
                    f"({ctx.global_batch})")
        return None
    if isinstance(action, SetBatchSize):
        b = action.per_worker
        if not _is_int(b) or b <= 0:
            return f"SetBatchSize(per_worker={b!r}): batch size must be a positive integer"
        if b * ctx.world > ctx.dataset_size:
            return (f"SetBatchSize(per_worker={b}): global batch {b * ctx.world} exceeds the "
                    f"dataset ({ctx.dataset_size} samples)")
        if action.scale_lr not in ("linear", "sqrt", None):
            return f"SetBatchSize(scale_lr={action.scale_lr!r}): use 'linear', 'sqrt' or None"
        return None
    if isinstance(action, SetLR):
        lr = action.lr
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
            return f"SetLR(lr={lr!r}): learning rate must be a positive finite number"
        return None
    if isinstance(action, SwitchStrategy):
        if action.strategy not in STRATEGIES:
            return (f"SwitchStrategy({action.strategy!r}): unknown strategy; "
                    f"choose one of {', '.join(STRATEGIES)}")
        return None
    if isinstance(action, Replan):
        return None
    return (f"{action!r} is not an action (expected Resize, SetBatchSize, SetLR, "
            "SwitchStrategy or Replan)")


def from_dict(d: Any, where: str = "action") -> Action:
    """Build an action from YAML: {resize: 4} | {batch_size: 32, scale_lr: sqrt} | {lr: 0.1} |
    {switch: sma} | {replan: true} (true: re-measure the links first). Values are checked later by `validate` (so a bad one is rejected at run time
    like any other invalid action); unknown keys are an error now."""
    if not isinstance(d, dict) or len(set(d) - {"scale_lr"}) != 1:
        raise PolicyError(f"{where}: expected one of {{resize: N}}, {{batch_size: N}}, {{lr: X}}, "
                          f"{{switch: NAME}}, {{replan: BOOL}}, got {d!r}")
    (key,) = set(d) - {"scale_lr"}
    v = d[key]
    if key == "resize":
        return Resize(v)
    if key == "batch_size":
        return SetBatchSize(v, d.get("scale_lr", "linear"))
    if key == "lr":
        return SetLR(v)
    if key == "switch":
        return SwitchStrategy(v)
    if key == "replan":
        return Replan(bool(v))
    raise PolicyError(f"{where}: unknown action {key!r}; use resize, batch_size, lr, switch or "
                      "replan")
