"""Load a user's model from a spec: ``path/to/file.py[:attr]`` or ``package.module[:attr]``.

This is the one contract every part of weft loads a model through (pipeline plans,
`weft.parallelize` plans, cluster jobs, adaptive training). ``attr`` (default ``model``) is an
`nn.Module` or a callable returning one. The file may also define ``example_input(batch_size)``
(a sample batch for profiling), ``example_batch(batch_size)`` returning ``(inputs, labels)``
(synthetic inputs and labels, preferred by `weft profile memory`), ``loss_fn``, ``dataset()`` returning ``(train, test)`` torch
datasets and ``optimizer(params)``; the caller says which it needs. ``loss_fn(output, target)``
gets the model's output as the model returns it (a Hugging Face ``ModelOutput``: take its
``logits``) under `weft.parallelize` and adaptive training; weft's pipeline runtime alone
reduces a structured output to one tensor first (its ``output`` field, e.g. ``"logits"``).

A file is imported under a name derived from its absolute path, with its own folder on
``sys.path`` (so it can import a module that sits next to it); spawned ranks import it the same
way. `resolve` turns a spec into its absolute form, which is what plans record, and
`fingerprint` hashes the file's content so that a plan can warn when the file changed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch.nn as nn

from weft.errors import PlanError


class SpecError(PlanError):
    """A model spec that cannot be loaded: missing file, import error, missing attribute."""


def _split(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"model spec {spec!r}: expected path/to/file.py[:attr] or "
                        "package.module[:attr]")
    target, _, attr = spec.partition(":")
    return target, attr or "model"


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def resolve(spec: str) -> str:
    """The spec with its file made absolute (module specs are returned unchanged)."""
    target, attr = _split(spec)
    if not _is_path(target):
        return spec
    path = Path(target).expanduser()
    if not path.is_file():
        raise SpecError(f"model spec {spec!r}: file {target} does not exist")
    return f"{path.resolve()}:{attr}"


def fingerprint(spec: str) -> str | None:
    """A short hash of the spec's file content (None for a module spec)."""
    target, _ = _split(spec)
    if not _is_path(target):
        return None
    try:
        return hashlib.sha256(Path(target).expanduser().read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def load_module(spec: str) -> tuple[ModuleType, str]:
    target, attr = _split(spec)
    if _is_path(target):
        path = Path(target).expanduser()
        if not path.is_file():
            raise SpecError(f"model spec {spec!r}: file {target} does not exist")
        path = path.resolve()
        name = f"weft_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        if name in sys.modules:
            return sys.modules[name], attr
        folder = str(path.parent)
        if folder not in sys.path:  # the file may import a module that sits next to it
            sys.path.insert(0, folder)
        mspec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(mspec)
        mod.__weft_source__ = str(path)
        sys.modules[name] = mod
        try:
            mspec.loader.exec_module(mod)
        except Exception as exc:
            del sys.modules[name]
            raise SpecError(f"model spec {spec!r}: importing {target} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
        return mod, attr
    try:
        mod = importlib.import_module(target)
    except Exception as exc:  # noqa: BLE001 - any import failure is the spec's problem
        raise SpecError(f"model spec {spec!r}: cannot import {target}: "
                        f"{type(exc).__name__}: {exc}") from None
    mod.__weft_source__ = target
    return mod, attr


def load_model(spec: str) -> nn.Module:
    mod, attr = load_module(spec)
    source = getattr(mod, "__weft_source__", mod.__name__)
    obj = getattr(mod, attr, None)
    if obj is None:
        found = sorted(k for k, v in vars(mod).items()
                       if not k.startswith("_") and (isinstance(v, nn.Module) or (
                           isinstance(v, type) and issubclass(v, nn.Module))))
        hint = f"; it defines {', '.join(found)} (name one as {spec.partition(':')[0]}:NAME)" \
            if found else ""
        raise SpecError(f"model spec {spec!r}: {source} defines no {attr!r}{hint}")
    if not isinstance(obj, nn.Module) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001 - the user's constructor failed
            raise SpecError(f"model spec {spec!r}: calling {attr}() failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, nn.Module):
        raise SpecError(f"model spec {spec!r}: {attr} is {type(obj).__name__}, not an nn.Module "
                        "or a function returning one")
    return obj


def extra(spec: str, name: str, default=None):
    """An optional helper (example_input, loss_fn, dataset, optimizer) from the spec's module."""
    mod, _ = load_module(spec)
    return getattr(mod, name, default)


def input_maker(spec: str):
    """A function b -> a batch of b inputs from the spec: its ``example_input(b)``, else the
    inputs of its ``example_batch(b)`` (which returns ``(inputs, labels)``); None if it
    defines neither."""
    make = extra(spec, "example_input")
    if make is not None:
        return make
    make_xy = extra(spec, "example_batch")
    if make_xy is None:
        return None

    def inputs(b):
        got = make_xy(b)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise SpecError(f"{spec}: example_batch({b}) must return (inputs, labels)")
        return got[0]
    return inputs
