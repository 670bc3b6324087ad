"""The elastic launcher: a coordinator process that hosts the c10d store.

`run_elastic(cfg, policy)` hosts a TCPStore, spawns `cfg.workers` workers
and a pool of warm *standby* processes (interpreter started, torch imported,
model built) that wait in the store. When a policy scales out, rank 0 asks
the launcher for joiners; the launcher hands out standbys (spawning more if
the pool is empty) and refills the pool. Leavers and finished workers send
their report back and exit; no surviving process is ever restarted. A child
that dies is announced in the store (`dead/<wid>`) so survivors need not
wait for a timeout; survivors also detect it by themselves (gloo errors,
heartbeats), which is what happens when workers run on other machines.
"""

from __future__ import annotations

import datetime
import json
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
from typing import Any

import torch.distributed as dist

from weft.adapt.config import AdaptConfig
from weft.errors import LaunchError

log = logging.getLogger("weft.adapt")


def build_model(cfg: AdaptConfig):
    from weft.models import digits_cnn, digits_mlp

    return digits_mlp(cfg.hidden, 2) if cfg.model == "mlp" else digits_cnn(max(4, cfg.hidden // 8))


def accuracy(model, dataset) -> float:
    import torch

    x, y = dataset.tensors
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def worker_main(cfg: AdaptConfig, policy: Any, wid: int, host: str, port: int,
                standby: bool) -> dict:
    """One worker process: join (now or when assigned), train, report."""
    import torch

    from weft.adapt.membership import Heartbeat, Membership, connect
    from weft.adapt.trainer import Trainer
    from weft.data import digits
    from weft.parallel.data import seed_everything

    torch.set_num_threads(1)
    store = connect(host, port, cfg.join_timeout)
    hb = Heartbeat(host, port, wid, cfg.heartbeat)
    hb.start()
    seed_everything(cfg.seed)
    train, test = digits(flat=cfg.model == "mlp")
    model = build_model(cfg)
    mem = Membership(store, wid, cfg.pg_timeout, cfg.join_timeout,
                     hb_timeout=max(3.0, 6 * cfg.heartbeat))
    trainer = Trainer(cfg, model, train, policy, mem, wid)
    report = {"wid": wid, "pid": os.getpid(), "role": "standby" if standby else "worker"}
    try:
        if standby:
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
            params=torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
            accuracy=None if trainer.left else accuracy(model, test),
            train_accuracy=None if trainer.left else accuracy(model, train))
        return report
    finally:
        hb.stop.set()
        if dist.is_initialized():
            dist.destroy_process_group()


def _child(queue, *args) -> None:
    from weft.launch import _die_with_parent

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wid = args[2]
    try:
        queue.put((wid, "ok", pickle.dumps(worker_main(*args))))
    except BaseException as exc:  # noqa: BLE001 - everything must reach the launcher
        queue.put((wid, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        sys.exit(1)


def run_elastic(cfg: AdaptConfig, policy: Any = None, timeout: float = 600.0) -> dict:
    """Run an elastic job on local processes. Returns
    {"reports": {wid: report}, "pids": {wid: pid}, "dead": {wid: exitcode}}."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=cfg.join_timeout))
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs: dict[int, Any] = {}
    pool: list[int] = []
    reports: dict[int, dict] = {}
    dead: dict[int, int] = {}

    def spawn(standby: bool) -> int:
        wid = len(procs)
        p = ctx.Process(target=_child, name=f"weft-adapt{wid}", daemon=False,
                        args=(queue, cfg, policy, wid, "127.0.0.1", store.port, standby))
        p.start()
        procs[wid] = p
        if standby:
            pool.append(wid)
        return wid

    store.set("members/0", json.dumps(list(range(cfg.workers))))
    handled = 0
    deadline = time.monotonic() + timeout
    try:
        for _ in range(cfg.workers):
            spawn(False)
        for _ in range(cfg.pool_size):
            spawn(True)
        while True:
            while not queue.empty():
                wid, status, payload = queue.get()
                if status == "error":
                    raise LaunchError(f"adaptive worker {wid} failed:\n{payload}", rank=wid,
                                      traceback=payload)
                reports[wid] = pickle.loads(payload)
            seq = store.add("req_seq", 0)
            while handled < seq:
                handled += 1
                req = json.loads(store.get(f"req/{handled}"))
                while len(pool) < req["count"]:
                    spawn(True)
                given, pool[:] = pool[:req["count"]], pool[req["count"]:]
                store.set(f"granted/{req['epoch']}", json.dumps(given))
                workers = len([w for w in procs if w not in pool and w not in reports
                               and w not in dead])
                for _ in range(min(cfg.pool_size, cfg.max_workers - workers) - len(pool)):
                    spawn(True)
            for wid, p in procs.items():
                if p.exitcode is not None and wid not in reports and wid not in dead:
                    time.sleep(0.1)
                    if not queue.empty():
                        break
                    dead[wid] = p.exitcode
                    store.set(f"dead/{wid}", "1")
                    log.warning("worker %d (pid %d) died with exit code %s", wid, p.pid, p.exitcode)
            active = [w for w in procs if w not in pool and w not in reports and w not in dead]
            if store.check(["job_done"]) and not active:
                store.set("shutdown", "1")
                if all(w in reports or w in dead for w in procs):
                    break
            elif not active and not store.check(["job_done"]):
                raise LaunchError(f"every worker is gone before the end (dead: {dead})")
            if time.monotonic() > deadline:
                raise LaunchError(f"adaptive job did not finish within {timeout:.0f} s")
            time.sleep(0.01)
        return {"reports": reports, "pids": {w: p.pid for w, p in procs.items()}, "dead": dead}
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
