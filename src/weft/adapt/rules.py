"""Declarative policies in YAML.

    train:                      # optional run settings (see AdaptConfig)
      workers: 2
      max_workers: 4
      strategy: sma
    policies:                   # built-in policies with their arguments
      - switch_on_noise: {threshold: 50, to: sgd}
      - adaptive_batch: {min_per_worker: 8, max_per_worker: 64}
      - schedule: {30: 4, 60: 3}
      - follow_capacity: {patience: 5}   # scale onto nodes that join (weft train --nnodes)
      - replan_on_slowdown: {factor: 1.5}  # re-measure links, re-plan collectives
    rules:                      # `when` is an expression over metrics and context
      - when: "step == 40"
        do: {lr: 0.02}
      - when: "throughput < 1000 and world < max_workers"
        do: {resize: 4}
        once: true

Expressions may use numbers, strings, comparisons, and/or/not, + - * /,
abs/min/max, the metric names (loss, noise_scale, throughput, grad_snr, ...)
and the context (step, epoch, world, batch_size, global_batch, lr, strategy,
min_workers, max_workers, capacity, batch_rule, replans, algorithm). A metric not
measured yet makes the rule false; any other name (a typo) is refused when the policy is loaded.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from weft.adapt import actions as A
from weft.adapt.actions import PolicyError
from weft.adapt.policy import (AdaptiveBatchSize, Compose, Context, FollowCapacity, Policy,
                               ReplanOnSlowdown, ScheduleResize, SwitchOnNoise, ThroughputScaler)

BUILTINS = {"adaptive_batch": AdaptiveBatchSize, "switch_on_noise": SwitchOnNoise,
            "schedule": ScheduleResize, "throughput": ThroughputScaler,
            "follow_capacity": FollowCapacity, "replan_on_slowdown": ReplanOnSlowdown}

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.Mod: operator.mod}
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}
_FUNCS = {"abs": abs, "min": min, "max": max}


class _Missing(Exception):
    pass


def compile_expr(src: str, where: str) -> ast.Expression:
    try:
        tree = ast.parse(str(src), mode="eval")
    except SyntaxError as exc:
        raise PolicyError(f"{where}: invalid expression {src!r}: {exc.msg}") from None
    allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub,
               ast.BinOp, ast.Compare, ast.Name, ast.Load, ast.Constant, ast.Call,
               *_BIN, *_CMP)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise PolicyError(f"{where}: {type(node).__name__} is not allowed in {src!r}")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name)
                                               and node.func.id in _FUNCS and not node.keywords):
            raise PolicyError(f"{where}: only abs/min/max may be called in {src!r}")
    return tree


def evaluate(tree: ast.AST, names: dict[str, Any]) -> Any:
    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.Name):
            if n.id not in names:
                raise _Missing(n.id)
            return names[n.id]
        if isinstance(n, ast.BoolOp):
            vals = (ev(v) for v in n.values)
            return all(vals) if isinstance(n.op, ast.And) else any(vals)
        if isinstance(n, ast.UnaryOp):
            v = ev(n.operand)
            return (not v) if isinstance(n.op, ast.Not) else -v
        if isinstance(n, ast.BinOp):
            return _BIN[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.Compare):
            left = ev(n.left)
            for op, right in zip(n.ops, n.comparators):
                r = ev(right)
                if not _CMP[type(op)](left, r):
                    return False
                left = r
            return True
        if isinstance(n, ast.Call):
            return _FUNCS[n.func.id](*[ev(a) for a in n.args])
        raise TypeError(type(n).__name__)

    return ev(tree)


# The names a rule may read: every metric the monitors or the trainer produce, the context,
# and global_batch. A rule on any other name (a typo: `stepp == 5`) would never fire.
METRICS = ("loss", "samples", "step_time", "comm_time", "throughput", "capacity",
           "grad_sq_small", "grad_sq_big", "grad_norm_sq", "grad_variance", "grad_snr",
           "noise_scale", "comm_predicted")
NAMES = frozenset(METRICS) | frozenset(Context.__dataclass_fields__) | {"global_batch"}


def check_names(tree: ast.AST, src: str, where: str) -> None:
    import difflib

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in NAMES and node.id not in _FUNCS:
            near = difflib.get_close_matches(node.id, sorted(NAMES), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise PolicyError(f"{where}: unknown name {node.id!r} in {src!r}{hint}; a rule may use "
                              f"{', '.join(sorted(NAMES))}")


@dataclass
class Rule(Policy):
    when: str
    do: list
    once: bool = False
    fired: bool = False

    def __post_init__(self):
        self._tree = compile_expr(self.when, f"rule {self.when!r}")
        check_names(self._tree, self.when, f"rule {self.when!r}")

    def on_step(self, metrics, ctx: Context):
        if self.once and self.fired:
            return None
        names = {**metrics, **{k: getattr(ctx, k) for k in ctx.__dataclass_fields__},
                 "global_batch": ctx.global_batch}
        try:
            hit = evaluate(self._tree, names)
        except _Missing:
            return None
        except (TypeError, ZeroDivisionError, ValueError):
            return None
        if not hit:
            return None
        self.fired = True
        return list(self.do)

    def state_dict(self) -> dict:
        return {"fired": self.fired}

    def load_state_dict(self, d):
        self.fired = d["fired"]


def policy_from_dict(doc: Any, where: str = "policy") -> Compose:
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise PolicyError(f"{where}: expected a mapping with 'policies' and/or 'rules'")
    unknown = set(doc) - {"train", "policies", "rules"}
    if unknown:
        raise PolicyError(f"{where}: unknown section(s) {sorted(unknown)}; "
                          "use train, policies, rules")
    out: list = []
    for i, item in enumerate(doc.get("policies") or []):
        w = f"{where}: policies[{i}]"
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise PolicyError(f"{w}: expected {{name: {{args}}}}, got {item!r}")
        (name, args), = item.items()
        if name not in BUILTINS:
            raise PolicyError(f"{w}: unknown policy {name!r}; choose one of {sorted(BUILTINS)}")
        try:
            if name == "schedule":
                out.append(ScheduleResize({int(k): v for k, v in (args or {}).items()}))
            else:
                out.append(BUILTINS[name](**(args or {})))
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"{w} ({name}): bad arguments {args!r}: {exc}") from None
    for i, r in enumerate(doc.get("rules") or []):
        w = f"{where}: rules[{i}]"
        if not isinstance(r, dict) or "when" not in r or "do" not in r:
            raise PolicyError(f"{w}: a rule needs 'when' and 'do', got {r!r}")
        extra = set(r) - {"when", "do", "once"}
        if extra:
            raise PolicyError(f"{w}: unknown field(s) {sorted(extra)}")
        dos = r["do"] if isinstance(r["do"], list) else [r["do"]]
        acts = [A.from_dict(d, f"{w}.do") for d in dos]
        check_names(compile_expr(r["when"], w), str(r["when"]), w)
        out.append(Rule(str(r["when"]), acts, bool(r.get("once", False))))
    return Compose(out)


def load_policy_file(path: str | Path) -> tuple[Compose, dict]:
    """(policy, train settings) from a YAML file; PolicyError names the file and field."""
    from weft.files import read_yaml

    path = Path(path)
    doc = read_yaml(path, PolicyError, "policy")
    policy = policy_from_dict(doc, str(path))
    train = (doc or {}).get("train") or {}
    if not isinstance(train, dict):
        raise PolicyError(f"{path}: 'train' must be a mapping")
    return policy, train
