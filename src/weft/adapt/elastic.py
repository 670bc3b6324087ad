"""Elastic workers and the job host.

`worker_main` is one worker process: it joins membership epoch 0 (or waits
as a warm *standby*: interpreter started, torch imported, model built) and
trains until the job ends or it leaves. `run_elastic(cfg, policy)` hosts the
job: the c10d TCPStore, this machine's node agent (weft.adapt.agent) and,
given `Nodes`, the agents of other machines that join. When a policy scales
out, rank 0 takes warm standbys from the store's registry (asking the node
agents for more when there are too few); agents refill their pools. Leavers
and finished workers put their report in the store and exit; no surviving
process is ever restarted. A worker that dies is announced in the store
(`dead/<wid>`) by its agent; survivors also detect it by themselves (gloo
errors, heartbeats), which is what happens when a whole machine is lost.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import sys
import time
import traceback
from typing import Any

import torch.distributed as dist

from weft.adapt.agent import NodeAgent, Nodes, open_store
from weft.adapt.config import AdaptConfig
from weft.errors import LaunchError
from weft.tensors import flatten

log = logging.getLogger("weft.adapt")


def build_model(cfg: AdaptConfig):
    from weft.demo.models import digits_cnn, digits_mlp

    return digits_mlp(cfg.hidden, 2) if cfg.model == "mlp" else digits_cnn(max(4, cfg.hidden // 8))


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
    from weft.demo.data import digits
    from weft.parallel.data import seed_everything

    torch.set_num_threads(1)
    store = connect(host, port, cfg.join_timeout, prefix)
    hb = Heartbeat(host, port, wid, cfg.heartbeat, prefix)
    hb.start()
    seed_everything(cfg.seed)
    train, test = digits(flat=cfg.model == "mlp")
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


def _child(cfg, policy, wid, host, port, standby) -> None:
    """A worker process: its report (or its error) goes to the job's store."""
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


def _publish_job(store, cfg: AdaptConfig, policy: Any, nodes: Nodes) -> None:
    store.set("max_nodes", str(nodes.max_nodes))
    store.add("wid_seq", cfg.workers)  # wids 0..workers-1 are the initial workers
    store.set("job", pickle.dumps((cfg, policy)))


def _place(store, cfg: AdaptConfig, n_nodes: int) -> None:
    """Initial workers onto the registered nodes, filling each node's slots in order."""
    wids, start = list(range(cfg.workers)), {}
    for n in range(1, n_nodes + 1):
        slots = json.loads(store.get(f"node/{n}"))["slots"]
        start[n], wids = wids[:slots], wids[slots:]
    if wids:
        raise LaunchError(f"workers={cfg.workers} do not fit the {n_nodes} node(s) present "
                          f"({cfg.workers - len(wids)} process slot(s))")
    for n, w in start.items():
        store.set(f"start/{n}", json.dumps(w))
    store.set("members/0", json.dumps(list(range(cfg.workers))))
    store.set("started", "1")


def _members_now(store, epoch: int) -> tuple[int, list[int]]:
    while store.check([f"members/{epoch + 1}"]):
        epoch += 1
    return epoch, json.loads(store.get(f"members/{epoch}"))


def _collect(store) -> dict:
    n = store.add("wid_seq", 0)
    out: dict = {"reports": {}, "pids": {}, "dead": {}}
    for w in range(n):
        if store.check([f"report/{w}"]):
            out["reports"][w] = pickle.loads(store.get(f"report/{w}"))
        if store.check([f"pid/{w}"]):
            out["pids"][w] = int(store.get(f"pid/{w}"))
        if store.check([f"dead/{w}"]):
            out["dead"][w] = int(store.get(f"dead/{w}"))
    return out


def run_elastic(cfg: AdaptConfig, policy: Any = None, timeout: float = 600.0,
                nodes: Nodes | None = None, store: dist.TCPStore | None = None) -> dict:
    """Host an elastic job: the store, this machine's node agent and, with `nodes`, the
    agents of other machines that join it (see weft.adapt.agent). Returns
    {"reports": {wid: report}, "pids": {wid: pid}, "dead": {wid: exitcode}}."""
    nodes = nodes or Nodes()
    if store is None:
        store, _ = open_store(nodes.endpoint, cfg.join_timeout)
    host = nodes.endpoint[0] if nodes.endpoint else "127.0.0.1"
    _publish_job(store, cfg, policy, nodes)
    agent = NodeAgent(store, host, store.port, nodes.nproc_per_node)
    deadline = time.monotonic() + timeout
    epoch = 0
    try:
        rdzv = time.monotonic() + cfg.join_timeout
        while store.add("node_seq", 0) < nodes.min_nodes:
            if time.monotonic() > rdzv:
                raise LaunchError(f"only {store.add('node_seq', 0)} of the {nodes.min_nodes} "
                                  f"node(s) needed joined within {cfg.join_timeout:g} s")
            time.sleep(0.05)
        _place(store, cfg, min(store.add("node_seq", 0), nodes.max_nodes))
        while not store.check(["job_done"]):
            agent.poll(stopping=False)
            for w in range(store.add("wid_seq", 0) if store.add("errors", 0) else 0):
                if store.check([f"error/{w}"]):
                    store.set("abort", "1")
                    msg = store.get(f"error/{w}").decode()
                    raise LaunchError(f"adaptive worker {w} failed:\n{msg}", rank=w,
                                      traceback=msg)
            epoch, members = _members_now(store, epoch)
            if all(store.check([f"dead/{w}"]) for w in members):
                store.set("abort", "1")
                raise LaunchError(f"every worker is gone before the end (dead: "
                                  f"{_collect(store)['dead']})")
            if time.monotonic() > deadline:
                store.set("abort", "1")
                raise LaunchError(f"adaptive job did not finish within {timeout:.0f} s")
            time.sleep(0.01)
        store.set("shutdown", "1")
        agent.stop()
        n = store.add("node_seq", 0)
        wait_nodes = time.monotonic() + 30
        while time.monotonic() < wait_nodes and not all(
                store.check([f"agent_done/{k}"]) or not _alive(store, k, cfg)
                for k in range(1, min(n, nodes.max_nodes) + 1)):
            time.sleep(0.05)
        return _collect(store)
    finally:
        agent.stop(kill=True)


def _alive(store, node: int, cfg: AdaptConfig) -> bool:
    from weft.adapt.membership import beat_age

    age = beat_age(store, f"nodehb/{node}")
    return age is not None and age < cfg.hb_timeout
