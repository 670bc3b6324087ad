"""Checkpoints: written atomically by rank 0, read by every rank."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from weft.errors import WeftError


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], rank0_only: bool = True) -> Path | None:
    """Write `state` with torch.save to a temp file, then rename over `path`.

    With `rank0_only` (default) only rank 0 writes; other ranks return None.
    A crash mid-write leaves the previous checkpoint intact.
    """
    if rank0_only and dist.is_initialized() and dist.get_rank() != 0:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise WeftError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - report any unpickling failure clearly
        raise WeftError(f"checkpoint {path} is unreadable: {exc}") from None


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, step: int = 0,
                   **extra: Any) -> dict[str, Any]:
    """The usual contents: model (unwrapped) and optimizer state, step, and anything else."""
    from weft.parallel.data import unwrap

    state = {"model": unwrap(model).state_dict(), "step": step, **extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


def restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Load a `training_state` into model (and optimizer); return the step."""
    from weft.parallel.data import unwrap

    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    return int(state.get("step", 0))
