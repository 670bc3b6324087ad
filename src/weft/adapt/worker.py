"""One elastic worker process: what runs inside each worker, and nothing that hosts the job.

`worker_main` joins membership epoch 0 (or waits as a warm *standby*:
interpreter started, torch imported, model built) and trains until the job
ends or it leaves. `child_main` is the process entry a node agent
(weft.adapt.agent) spawns: it runs `worker_main` and puts the report (or the
error) in the job's store. Imports flow one way: worker <- agent <- host.

The model, data, loss, optimizer and scheduler are the user's (a
weft.adapt.workload.Workload, built here), or by default the digits example of
`AdaptConfig.model` (mlp | cnn), named by spec string through weft.model_spec:
weft.adapt does not import the demo package (a higher layer) statically.
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
from weft.tensors import flatten

def built_workload(cfg: AdaptConfig, workload=None):
    """The workload made concrete in this process (the digits example of `cfg.model` when
    none is given)."""
    from weft.adapt.workload import build, digits

    return build(workload if workload is not None else digits(cfg.model, cfg.hidden),
                 cfg.lr, cfg.momentum)


def worker_main(cfg: AdaptConfig, policy: Any, wid: int, host: str, port: int,
                standby: bool, prefix: str = "", workload=None, device: str | None = None,
                status: dict | None = None) -> dict:
    """One worker process: join (now or when assigned), train, report. `prefix`: the job's
    keys live under it in the store at host:port; `device`: this process slot's device in
    `cfg.topology` (published for re-planning); `status["member"]` becomes True once this
    worker is a working member (a failure before that is a failed joiner, not a bug)."""
    import torch

    from weft.adapt.membership import Heartbeat, Membership, connect
    from weft.adapt.trainer import Trainer
    from weft.adapt.workload import evaluate
    from weft.parallel.data import seed_everything

    status = status if status is not None else {}
    torch.set_num_threads(1)
    store = connect(host, port, cfg.join_timeout, prefix)
    hb = Heartbeat(host, port, wid, cfg.heartbeat, prefix)
    hb.start()
    store.set(f"pid/{wid}", str(os.getpid()))
    if device:
        store.set(f"device/{wid}", device)
    seed_everything(cfg.seed)
    built = built_workload(cfg, workload)
    mem = Membership(store, wid, cfg.pg_timeout, cfg.join_timeout,
                     hb_timeout=cfg.hb_timeout)
    trainer = Trainer(cfg, built, policy, mem, wid)
    report = {"wid": wid, "pid": os.getpid(), "role": "standby" if standby else "worker",
              "device": device}
    try:
        if standby:
            mem.register_standby()
            epoch = mem.wait_assignment()
            if epoch is None:
                return report
            report["role"] = "joiner"
            if not mem.join(epoch):
                raise LaunchError(f"worker {wid} was assigned epoch {epoch} but is not a member")
            trainer.joined()
        else:
            mem.join(0)
            trainer.start()
        status["member"] = True
        trainer.run()
        while trainer.benched:  # left out after a failure: a warm standby until taken back
            mem.bench()
            epoch = mem.wait_assignment()
            if epoch is None:  # the job ended without it
                trainer.left = True
                report["role"] = "standby"
                break
            if not mem.join(epoch):
                raise LaunchError(f"worker {wid} was assigned epoch {epoch} but is not a member")
            trainer.joined()
            trainer.run()
        if not trainer.left and mem.rank == 0:
            store.set("job_done", "1")
        final = not trainer.left
        ev = evaluate(trainer.engine.model, built.test, built.loss_fn) if final else {}
        tr = evaluate(trainer.engine.model, built.train, built.loss_fn) \
            if final and workload is None else {}
        engine = trainer.engine
        report.update(
            left=trainer.left, rank=None if trainer.left else mem.rank, step=trainer.step,
            history=trainer.history, events=trainer.events, samples=trainer.samples,
            memberships=trainer.memberships, pid_end=os.getpid(),
            params=None if engine.sharded else flatten(engine.model.parameters()),
            state=_final_state(trainer) if final else None,
            user_state=(trainer.user.state_dict() if trainer.user is not None and final
                        else None),
            test=ev, accuracy=ev.get("accuracy"), test_loss=ev.get("loss"),
            train_accuracy=tr.get("accuracy"),
            checkpoints=trainer.ckpt.written if trainer.ckpt is not None else [])
        return report
    finally:
        hb.stop.set()
        if dist.is_initialized():
            dist.destroy_process_group()


def _final_state(trainer) -> dict:
    """Parameters and optimizer state by name, whole tensors (collective under a plan)."""
    msd, osd = trainer.engine.fqn_state()
    return {"model": msd, "optim": osd}


def child_main(cfg, policy, wid, host, port, standby, workload=None, device=None) -> None:
    """A worker process's entry: its report (or its error) goes to the job's store. A
    standby that fails before it is a working member (its model factory fails on this
    machine, ...) is a failed joiner: recorded (`joiner_error/<wid>`), not fatal; the
    others go on. Any other error stops the job with its traceback."""
    from weft.adapt.membership import connect

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["WEFT_WORKER_ID"] = str(wid)
    os.environ["WEFT_WORKER_ROLE"] = "standby" if standby else "worker"
    status: dict = {}
    try:
        if isinstance(policy, bytes):  # from a node agent: unpickled only here
            policy, workload = pickle.loads(policy), pickle.loads(workload)
        payload = pickle.dumps(worker_main(cfg, policy, wid, host, port, standby,
                                           workload=workload, device=device, status=status))
        connect(host, port, 30.0).set(f"report/{wid}", payload)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the host
        msg = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        fatal = not standby or status.get("member")
        try:
            store = connect(host, port, 10.0)
            if fatal:
                store.set(f"error/{wid}", msg)
                store.add("errors", 1)  # the host scans error/<wid> only once this is non-zero
            else:
                store.set(f"joiner_error/{wid}", msg)
        finally:
            sys.stderr.write(f"weft adaptive worker {wid} failed:\n{msg}")
            sys.exit(1)
