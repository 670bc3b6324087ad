"""Read a JSON or YAML file, or raise an error that names the path and what is wrong.

    data = read_json(path, PlanError, what="plan")          # PlanError("plan.json: not valid JSON ...")
    data = read_yaml(path, TopologyError, what="topology", mapping=True)

Every loader in weft reads its files through these two functions, so a missing file, an
unreadable one and a malformed one give the same kind of message everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from weft.errors import WeftError


def _read_text(path: Path, error: type[WeftError], what: str) -> str:
    if not path.exists():
        raise error(f"{path}: {what} file not found")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise error(f"{path}: cannot read {what} file: {reason}") from None


def _check_mapping(data: Any, path: Path, error: type[WeftError], mapping: bool) -> Any:
    if mapping and not isinstance(data, dict):
        raise error(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def read_json(path: str | os.PathLike, error: type[WeftError] = WeftError, what: str = "JSON",
              mapping: bool = False) -> Any:
    """The parsed JSON of `path`; `error` (naming the path) if missing, unreadable or invalid."""
    path = Path(path)
    text = _read_text(path, error, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    return _check_mapping(data, path, error, mapping)


def read_yaml(path: str | os.PathLike, error: type[WeftError] = WeftError, what: str = "YAML",
              mapping: bool = False) -> Any:
    """The parsed YAML (a superset of JSON) of `path`; `error` naming the path otherwise."""
    import yaml

    path = Path(path)
    text = _read_text(path, error, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None
    return _check_mapping(data, path, error, mapping)
