"""Periodic asynchronous checkpoints of an adaptive run, and resuming from them.

Every `checkpoint_every` steps (and at the end) the trainer hands the state of the
step just completed to `Checkpointer.submit` on rank 0; a background thread writes it
while training goes on (at most one write in flight: the next waits for it). A
checkpoint is a folder:

    <checkpoint>/             model and optimizer state, by parameter name, in
                              torch.distributed.checkpoint (DCP) format
    <checkpoint>/trainer.pt   step, epoch, data position, batch, strategy, LR scheduler,
                              monitors, policy, callbacks and the user's state
    <checkpoint>/weft.json    format, step, world, plan, time

written into `.<name>.partial` and renamed over the folder when complete: a crash
(of a worker, of the job's host, of everything) leaves the previous checkpoint. The
state is the whole model (a plan's shards gathered), so `weft train --resume DIR` loads
it into any number of workers and under any plan: rank 0 reads it into a fresh model
(DCP reshards to whole tensors) and every worker loads it like a joiner's state.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import warnings
from pathlib import Path

import torch

from weft.atomic import replace_dir, write_json
from weft.errors import WeftError

FORMAT = "weft.adapt-checkpoint/1"
META = "weft.json"


class CheckpointError(WeftError, RuntimeError):
    pass


def write(path: str | os.PathLike, msd: dict, osd: dict, extra: dict, meta: dict) -> Path:
    """Write one checkpoint folder atomically (single process; no process group used)."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with warnings.catch_warnings():  # "torch.distributed is disabled": single process, meant
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp), no_dist=True)
    torch.save(extra, tmp / "trainer.pt")
    write_json(tmp / META, {"format": FORMAT, **meta})
    return replace_dir(tmp, path)


def exists(path: str | os.PathLike) -> bool:
    return (Path(path) / META).is_file()


def meta(path: str | os.PathLike) -> dict:
    p = Path(path) / META
    if not p.is_file():
        raise CheckpointError(f"checkpoint {path}: not found or incomplete (no {META}); "
                              "nothing to resume from")
    m = json.loads(p.read_text())
    if m.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: format {m.get('format')!r} is not {FORMAT}")
    return m


def read(path: str | os.PathLike, make_model, make_optimizer) -> tuple[dict, dict, dict]:
    """(model state, optimizer state, trainer extras) of a checkpoint, loaded into a fresh
    model and optimizer from the factories (so it must fit the workload's model)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict)

    meta(path)
    model = make_model()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad])
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(path), no_dist=True)
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - name checkpoint and model
        raise CheckpointError(f"checkpoint {path} does not fit the model "
                              f"{type(model).__name__}: {type(exc).__name__}: "
                              f"{str(exc)[:400]}") from None
    extra = torch.load(Path(path) / "trainer.pt", weights_only=False)
    return state["model"], state["optim"], extra


class Checkpointer:
    """Writes checkpoints on a background thread (rank 0 only)."""

    def __init__(self, path: str | os.PathLike, every: int):
        self.path, self.every = Path(path), every
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.written: list[dict] = []  # {"step", "seconds"} of each finished write

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def submit(self, msd: dict, osd: dict, extra: dict, meta: dict) -> None:
        self.wait()

        def run():
            t0 = time.perf_counter()
            try:
                write(self.path, msd, osd, extra, meta)
                self.written.append({"step": meta["step"], "seconds": time.perf_counter() - t0})
            except BaseException as exc:  # noqa: BLE001 - reported by wait()
                self.error = exc

        self._thread = threading.Thread(target=run, name="weft-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.error is not None:
            err, self.error = self.error, None
            raise CheckpointError(f"writing checkpoint {self.path} failed: "
                                  f"{type(err).__name__}: {err}") from err
