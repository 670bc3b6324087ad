"""Checkpoints that move between plans: torch.distributed.checkpoint (DCP), resharded on load.

`save(path, model, optimizer)` writes the model's and the optimizer's *sharded* state
(get_state_dict: DTensors for TP/FSDP parameters, plain tensors otherwise, keyed by the
model's own parameter names) into the folder `path`; every rank writes its own pieces.
`load` reads them into a model parallelized under any other plan (DCP reshards: FSDP
shards -> TP shards -> whole tensors), so training continues where it stopped.

Atomic: ranks write into `.<name>.partial` next to `path`; after a barrier rank 0 adds
`weft.json` (plan, extras) and renames it over `path`. A crash leaves the old checkpoint.
The folder must be on a file system every rank sees (local ranks: any local folder).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from weft.atomic import replace_dir, write_json
from weft.errors import WeftError

META = "weft.json"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) model state on every rank, as CPU tensors with the model's names."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().clone()
            for k, v in sd.items()}


def _state(model: nn.Module, optimizer, optim_names: dict[str, str] | None = None
           ) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
    )

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": _renamed(osd, optim_names or {})}


def _renamed(osd: dict, names: dict[str, str]) -> dict:
    """An optimizer state dict (keyed by parameter names) with names[k] for k: a weight
    tied across pipeline stages is saved under the model's first name for it, as one
    process saves it (weft.parallel.tied), so the checkpoint resumes under any plan."""
    if not names:
        return osd
    return {**osd, "state": {names.get(k, k): v for k, v in osd["state"].items()},
            "param_groups": [dict(g, params=[names.get(p, p) for p in g["params"]])
                             for g in osd["param_groups"]]}


def save(path: str | os.PathLike, model: nn.Module, optimizer=None, plan=None,
         optim_names: dict[str, str] | None = None, **extra) -> Path:
    """Write model (and optimizer) state to the folder `path`, atomically; `extra` (JSON-able,
    e.g. step=100) goes to weft.json and comes back from `load`. `optim_names`: optimizer
    state saved under another parameter name (`_renamed`)."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        json.dumps(extra)
    except TypeError as exc:
        raise WeftError(f"checkpoint {path}: extra values must be JSON-serialisable: {exc}") from None
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    state = _state(model, optimizer, optim_names)
    dcp.save(state, checkpoint_id=str(tmp))
    _barrier()
    if _rank() == 0:
        from weft.plan.parse import to_dict

        write_json(tmp / META, {"format": "weft.checkpoint/1", "optimizer": optimizer is not None,
                                "plan": to_dict(plan) if plan is not None else None,
                                "extra": extra})
        replace_dir(tmp, path)
    _barrier()
    return path


def load(path: str | os.PathLike, model: nn.Module, optimizer=None,
         optim_names: dict[str, str] | None = None) -> dict[str, Any]:
    """Read a checkpoint written by `save` under any plan into `model` (and `optimizer`,
    whose gradients must be unset); return the extras saved with it. `optim_names` as
    `save`'s."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise WeftError(f"checkpoint {path} does not exist or is incomplete (no {META})")
    meta = json.loads(meta_path.read_text())
    if optimizer is not None and not meta.get("optimizer"):
        raise WeftError(f"checkpoint {path} has no optimizer state; load without optimizer=")
    state = _state(model, optimizer, optim_names)
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as exc:  # noqa: BLE001 - name the checkpoint and the model
        raise WeftError(f"checkpoint {path} does not fit {type(model).__name__}: "
                        f"{type(exc).__name__}: {str(exc)[:500]}") from None
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state["model"])
    else:
        back = {v: k for k, v in (optim_names or {}).items()}
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=_renamed(state["optim"], back))
    return meta.get("extra", {})
