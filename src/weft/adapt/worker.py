"""One elastic worker process: what runs inside each worker, and nothing that hosts the job.

`worker_main` joins membership epoch 0 (or waits as a warm *standby*:
interpreter started, torch imported, model built) and trains until the job
ends or it leaves. `child_main` is the process entry a node agent
(weft.adapt.agent) spawns: it runs `worker_main` and puts the report (or the
error) in the job's store. Imports flow one way: worker <- agent <- host.

The model and data are the digits workload of `AdaptConfig.model` (mlp | cnn),
named by spec string through weft.model_spec: weft.adapt does not import the
demo package (a higher layer) statically.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from typing import Any

import torch.distributed as dist

from weft.adapt.config import AdaptConfig
from weft.errors import LaunchError
from weft.model_spec import load_module
from weft.tensors import flatten

MODELS = {"mlp": "weft.demo.models:digits_mlp", "cnn": "weft.demo.models:digits_cnn"}
DATASET = "weft.demo.data:digits"


def _resolve(spec: str):
    mod, attr = load_module(spec)
    return getattr(mod, attr)


def build_model(cfg: AdaptConfig):
    """The digits model `cfg.model` names, sized by `cfg.hidden`."""
    if cfg.model == "mlp":
        return _resolve(MODELS["mlp"])(cfg.hidden, 2)
    return _resolve(MODELS["cnn"])(max(4, cfg.hidden // 8))


def datasets(cfg: AdaptConfig):
    """(train, test) digits, flat for the MLP and 1x8x8 images for the CNN."""
    return _resolve(DATASET)(flat=cfg.model == "mlp")


def accuracy(model, dataset) -> float:
    import torch

    x, y = dataset.tensors
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def worker_main(cfg: AdaptConfig, policy: Any, wid: int, host: str, port: int,
                standby: bool, prefix: str = "") -> dict:
    """One worker process: join (now or when assigned), train, report. `prefix`: the job's
    keys live under it in the store at host:port."""
    import torch

    from weft.adapt.membership import Heartbeat, Membership, connect
    from weft.adapt.trainer import Trainer
    from weft.parallel.data import seed_everything

    torch.set_num_threads(1)
    store = connect(host, port, cfg.join_timeout, prefix)
    hb = Heartbeat(host, port, wid, cfg.heartbeat, prefix)
    hb.start()
    seed_everything(cfg.seed)
    train, test = datasets(cfg)
    model = build_model(cfg)
    mem = Membership(store, wid, cfg.pg_timeout, cfg.join_timeout,
                     hb_timeout=cfg.hb_timeout)
    trainer = Trainer(cfg, model, train, policy, mem, wid)
    report = {"wid": wid, "pid": os.getpid(), "role": "standby" if standby else "worker"}
    store.set(f"pid/{wid}", str(os.getpid()))
    try:
        if standby:
            mem.register_standby()
            epoch = mem.wait_assignment()
            if epoch is None:
                return report
            report["role"] = "joiner"
            if not mem.join(epoch):
                raise LaunchError(f"worker {wid} was assigned epoch {epoch} but is not a member")
            trainer.broadcast_state(0)
            trainer._entered("join")
            trainer.event("join", f"worker {wid} joined as rank {mem.rank}")
        else:
            mem.join(0)
            trainer._entered("start")
        trainer.run()
        if not trainer.left and mem.rank == 0:
            store.set("job_done", "1")
        report.update(
            left=trainer.left, rank=None if trainer.left else mem.rank, step=trainer.step,
            history=trainer.history, events=trainer.events, samples=trainer.samples,
            memberships=trainer.memberships, pid_end=os.getpid(),
            params=flatten(model.parameters()),
            accuracy=None if trainer.left else accuracy(model, test),
            train_accuracy=None if trainer.left else accuracy(model, train))
        return report
    finally:
        hb.stop.set()
        if dist.is_initialized():
            dist.destroy_process_group()


def child_main(cfg, policy, wid, host, port, standby) -> None:
    """A worker process's entry: its report (or its error) goes to the job's store."""
    from weft.adapt.membership import connect
    from weft.launch import _die_with_parent

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        payload = pickle.dumps(worker_main(cfg, policy, wid, host, port, standby))
        connect(host, port, 30.0).set(f"report/{wid}", payload)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the host
        msg = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        try:
            store = connect(host, port, 10.0)
            store.set(f"error/{wid}", msg)
            store.add("errors", 1)  # the host scans error/<wid> only once this is non-zero
        finally:
            sys.stderr.write(f"weft adaptive worker {wid} failed:\n{msg}")
            sys.exit(1)
