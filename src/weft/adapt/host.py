"""The job host of elastic training (what runs in the launching process, never in a worker).

`run_elastic(cfg, policy)` hosts the job: the c10d TCPStore, this machine's
node agent (weft.adapt.agent) and, given `Nodes`, the agents of other
machines that join. When a policy scales
out, rank 0 takes warm standbys from the store's registry (asking the node
agents for more when there are too few); agents refill their pools. Leavers
and finished workers put their report in the store and exit; no surviving
process is ever restarted. A worker that dies is announced in the store
(`dead/<wid>`) by its agent; survivors also detect it by themselves (gloo
errors, heartbeats), which is what happens when a whole machine is lost.
What runs inside a worker process is weft.adapt.worker; imports flow one
way: worker <- agent <- host.
"""

from __future__ import annotations

import json
import pickle
import time
from typing import Any

import torch.distributed as dist

from weft.adapt.agent import NodeAgent, Nodes, open_store
from weft.adapt.config import AdaptConfig
from weft.errors import LaunchError


def publish_job(store, cfg: AdaptConfig, policy: Any, nodes: Nodes, workload=None) -> None:
    store.set("max_nodes", str(nodes.max_nodes))
    store.add("wid_seq", cfg.workers)  # wids 0..workers-1 are the initial workers
    store.set("job_policy", pickle.dumps(policy))
    store.set("job_workload", pickle.dumps(workload))
    store.set("job", pickle.dumps(cfg))


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


def collect(store) -> dict:
    n = store.add("wid_seq", 0)
    out: dict = {"reports": {}, "pids": {}, "dead": {}, "joiner_errors": {}}
    for w in range(n):
        if store.check([f"joiner_error/{w}"]):
            out["joiner_errors"][w] = store.get(f"joiner_error/{w}").decode()
        if store.check([f"report/{w}"]):
            out["reports"][w] = pickle.loads(store.get(f"report/{w}"))
        if store.check([f"pid/{w}"]):
            out["pids"][w] = int(store.get(f"pid/{w}"))
        if store.check([f"dead/{w}"]):
            out["dead"][w] = int(store.get(f"dead/{w}"))
    return out


def run_elastic(cfg: AdaptConfig, policy: Any = None, timeout: float = 600.0,
                nodes: Nodes | None = None, store: dist.TCPStore | None = None,
                workload=None) -> dict:
    """Host an elastic job: the store, this machine's node agent and, with `nodes`, the
    agents of other machines that join it (see weft.adapt.agent). `workload`: what to
    train (weft.adapt.workload.Workload; default the digits example). Returns
    {"reports": {wid: report}, "pids": {wid: pid}, "dead": {wid: exitcode},
    "joiner_errors": {wid: traceback}}."""
    nodes = nodes or Nodes()
    if store is None:
        store, _ = open_store(nodes.endpoint, cfg.join_timeout)
    host = nodes.endpoint[0] if nodes.endpoint else "127.0.0.1"
    publish_job(store, cfg, policy, nodes, workload)
    agent = NodeAgent(store, host, store.port, nodes.nproc_per_node, cfg.devices)
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
                                  f"{collect(store)['dead']})")
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
        return collect(store)
    finally:
        agent.stop(kill=True)


def _alive(store, node: int, cfg: AdaptConfig) -> bool:
    from weft.adapt.membership import beat_age

    age = beat_age(store, f"nodehb/{node}")
    return age is not None and age < cfg.hb_timeout
