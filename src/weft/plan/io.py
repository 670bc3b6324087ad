"""Read and write plans as YAML or JSON (by suffix: .json is JSON, anything else YAML)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from weft.atomic import write_text
from weft.errors import PlanError
from weft.plan.format import Plan
from weft.plan.parse import from_dict, to_dict


def loads(text: str, source: str = "<plan>") -> Plan:
    """Parse YAML (a superset of JSON) and validate."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"{source}: not valid YAML or JSON: {exc}") from None
    return from_dict(data, source)


def load(path: str | os.PathLike) -> Plan:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read plan file: {exc.strerror}") from None
    return loads(text, str(path))


def dumps(plan: Plan, fmt: str = "yaml") -> str:
    data = to_dict(plan)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    raise PlanError(f"unknown plan format {fmt!r}; 'yaml' or 'json'")


def save(plan: Plan, path: str | os.PathLike) -> Path:
    """Write atomically; JSON when `path` ends in .json, else YAML."""
    path = Path(path)
    return write_text(path, dumps(plan, "json" if path.suffix == ".json" else "yaml"))


def resolve(plan: Plan | str | os.PathLike | dict) -> Plan:
    """A Plan from a Plan, a file path or plain data."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, dict):
        return from_dict(plan)
    return load(plan)
