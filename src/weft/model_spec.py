"""Load a user's model from a spec: ``path/to/file.py[:attr]`` or ``package.module[:attr]``.

``attr`` (default ``model``) is an `nn.Module` or a callable returning one.
The file may also define ``example_input(batch_size)`` (a sample batch for
profiling), ``loss_fn`` and ``dataset()`` returning ``(train, test)`` torch
datasets; `weft train` uses them when present (digits and cross-entropy otherwise).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch.nn as nn

from weft.errors import PlanError


def load_module(spec: str) -> tuple[ModuleType, str]:
    target, _, attr = spec.partition(":")
    attr = attr or "model"
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise PlanError(f"model spec {spec!r}: file {target} does not exist")
        name = f"weft_user_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name], attr
        mspec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(mspec)
        sys.modules[name] = mod
        try:
            mspec.loader.exec_module(mod)
        except Exception as exc:
            del sys.modules[name]
            raise PlanError(f"model spec {spec!r}: importing {target} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
        return mod, attr
    try:
        return importlib.import_module(target), attr
    except ImportError as exc:
        raise PlanError(f"model spec {spec!r}: cannot import {target}: {exc}") from None


def load_model(spec: str) -> nn.Module:
    mod, attr = load_module(spec)
    obj = getattr(mod, attr, None)
    if obj is None:
        raise PlanError(f"model spec {spec!r}: {mod.__name__} has no attribute {attr!r}")
    if not isinstance(obj, nn.Module) and callable(obj):
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise PlanError(f"model spec {spec!r}: {attr} is {type(obj).__name__}, not an nn.Module "
                        "or a function returning one")
    return obj


def extra(spec: str, name: str, default=None):
    """An optional helper (example_input, loss_fn, dataset) from the spec's module."""
    mod, _ = load_module(spec)
    return getattr(mod, name, default)
