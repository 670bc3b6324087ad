"""Node agents: one per machine, each starting that machine's workers and warm standbys.

Every machine runs the same command (as with torchrun)::

    weft train --policy P --nnodes MIN:MAX --nproc-per-node K --rdzv-endpoint HOST:PORT

The agent that binds HOST:PORT hosts the c10d TCPStore and is the *host*: it
publishes the job (config and policy), waits for MIN nodes, places the
initial workers on them and, when the job is done, collects every worker's
report. Every agent, the host's included:

- registers (`node/<n>`), heart-beats (`nodehb/<n>`) and publishes its process
  slots that run no member and no still-starting standby (`free/<n>`), which
  policies see as `capacity`;
- starts its initial workers (`start/<n>`) and keeps its free slots filled with
  warm standbys (at most `standby` per node when that is set);
- claims on-demand spawn requests (`spawn_req`) while it has a free slot;
- announces a local worker that died (`dead/<wid>` = exit code);
- gives each process a slot and, with `devices`, that slot's device of the job's
  topology (the re-planner places members on them);
- stops starting standbys after `MAX_STANDBY_FAILURES` of them failed in a row (e.g. the
  user's model factory fails on this machine) and says why (`nostandby/<n>`), so a
  scale-out grows by what there is instead of waiting;
- stops when the job shuts down (or aborts), then sets `agent_done/<n>`.

A node may join while the job runs (up to MAX nodes): its slots add capacity
and a policy (e.g. `FollowCapacity`) scales out onto them; nobody restarts.
A node that dies takes its workers with it (they die with their agent); the
survivors detect it and re-form their group. The host node must stay: it
holds the store, as torchrun's c10d rendezvous host does.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import time
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from weft.adapt.worker import child_main
from weft.errors import LaunchError
from weft.launch import new_process, process_context

log = logging.getLogger("weft.adapt")
MAX_STANDBY_FAILURES = 2


@dataclass(frozen=True)
class Nodes:
    """Multi-machine settings: MIN:MAX nodes, process slots per node, the store endpoint."""

    min_nodes: int = 1
    max_nodes: int = 1
    nproc_per_node: int | None = None  # default: max_workers (one machine hosts them all)
    endpoint: tuple[str, int] | None = None  # default: 127.0.0.1 and a free port

    def __post_init__(self):
        if not 1 <= self.min_nodes <= self.max_nodes:
            raise LaunchError(f"--nnodes {self.min_nodes}:{self.max_nodes}: need 1 <= MIN <= MAX")
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise LaunchError(f"--nproc-per-node {self.nproc_per_node}: must be >= 1")


def parse_nnodes(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition(":")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise LaunchError(f"--nnodes {text!r}: expected N or MIN:MAX") from None
    return lo_i, hi_i


def parse_endpoint(text: str, default_port: int = 29400) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        return host or "127.0.0.1", int(port) if port else default_port
    except ValueError:
        raise LaunchError(f"--rdzv-endpoint {text!r}: expected HOST:PORT") from None


def _is_local(host: str) -> bool:
    try:
        addr = socket.gethostbyname(host)
    except OSError:
        return False
    if addr.startswith("127.") or host in ("localhost", socket.gethostname()):
        return True
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((addr, 0))
        return True
    except OSError:
        return False


def open_store(endpoint: tuple[str, int] | None, timeout: float) -> tuple[dist.TCPStore, bool]:
    """(store, is_host): host the store if the endpoint is this machine's and free."""
    import datetime

    td = datetime.timedelta(seconds=timeout)
    if endpoint is None:
        return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                             timeout=td), True
    host, port = endpoint
    if _is_local(host):
        try:
            return dist.TCPStore(host, port, is_master=True, wait_for_workers=False,
                                 timeout=td), True
        except Exception:  # noqa: BLE001 - port taken: another agent hosts it
            pass
    try:
        return dist.TCPStore(host, port, is_master=False, timeout=td), False
    except Exception as exc:  # noqa: BLE001
        raise LaunchError(f"cannot reach the job's store at {host}:{port} within "
                          f"{timeout:g} s: {exc}") from None


class NodeAgent:
    """Starts and watches the worker processes of one machine."""

    def __init__(self, store: dist.TCPStore, host: str, port: int, slots: int | None,
                 devices: list[str] | None = None):
        self.store, self.host, self.port = store, host, port
        store.wait(["job"])
        # The policy and workload pass through as bytes: only the workers unpickle them (a
        # machine's agent need not import the user's classes).
        self.cfg, self.policy, self.workload = pickle.loads(store.get("job")), \
            store.get("job_policy"), store.get("job_workload")
        self.slots = slots or (len(devices) if devices else self.cfg.max_workers)
        self.devices = list(devices) if devices else None
        if self.devices is not None and len(self.devices) < self.slots:
            raise LaunchError(f"--devices names {len(self.devices)} device(s) for "
                              f"{self.slots} process slot(s) on this machine")
        self.max_nodes = int(store.get("max_nodes"))
        self.node = store.add("node_seq", 1)
        if self.node > self.max_nodes:
            store.set(f"nodegone/{self.node}", "1")
            raise LaunchError(f"the job already has its maximum of {self.max_nodes} node(s)")
        store.set(f"node/{self.node}", json.dumps({"host": socket.gethostname(),
                                                   "slots": self.slots}))
        self.ctx = process_context()
        self.procs: dict[int, Any] = {}
        self.active: set[int] = set()
        self.standby: set[int] = set()
        self.ready: set[int] = set()  # standbys that are warm (model built, registered)
        self.dead: dict[int, int] = {}
        self.stopped: set[int] = set()  # terminated by this agent at shutdown: not deaths
        self.slot_of: dict[int, int] = {}
        self.standby_failures = 0  # in a row
        self.started = False
        self._beat = 0.0
        self._free = None
        self.beat()

    def beat(self) -> None:
        now = time.time()
        if now - self._beat >= min(0.5, self.cfg.heartbeat):
            self.store.set(f"nodehb/{self.node}", repr(now))
            self._beat = now
        starting = sum(1 for w in self.standby if w not in self.ready)
        self.ready.update(w for w in self.standby if w not in self.ready
                          and self.store.check([f"ready/{w}"]))
        free = max(0, self.slots - len(self.active) - starting)
        if free != self._free:
            self.store.set(f"free/{self.node}", str(free))
            self._free = free

    def spawn(self, wid: int, standby: bool) -> None:
        slot = min(set(range(self.slots + len(self.procs) + 1)) - set(self.slot_of.values()))
        device = self.devices[slot] if self.devices and slot < len(self.devices) else None
        p = new_process(self.ctx, child_main, (self.cfg, self.policy, wid, self.host, self.port,
                                               standby, self.workload, device), name=f"weft-adapt{wid}")
        p.start()
        self.procs[wid] = p
        self.slot_of[wid] = slot
        (self.standby if standby else self.active).add(wid)

    def new_standby(self) -> None:
        self.spawn(self.store.add("wid_seq", 1) - 1, True)

    def _standby_failed(self, wid: int) -> None:
        self.standby_failures += 1
        if self.standby_failures >= MAX_STANDBY_FAILURES:
            first = self.store.get(f"joiner_error/{wid}").decode().splitlines()[0]
            why = (f"{self.standby_failures} standby worker(s) on node {self.node} failed to "
                   f"start (last, worker {wid}: {first})")
            if not self.store.check([f"nostandby/{self.node}"]):
                log.warning("%s; no more standbys on this node", why)
            self.store.set(f"nostandby/{self.node}", why)

    @property
    def gave_up(self) -> bool:
        return self.standby_failures >= MAX_STANDBY_FAILURES

    def start(self) -> None:
        key = f"start/{self.node}"
        wids = json.loads(self.store.get(key)) if self.store.check([key]) else []
        for w in wids:
            self.spawn(w, False)
        self.started = True

    def poll(self, stopping: bool) -> None:
        """One round of watching: deaths, assignments, pool refill, spawn requests."""
        s = self.store
        if not self.started and s.check(["started"]):
            self.start()
        for wid, p in list(self.procs.items()):
            if p.exitcode is None:
                continue
            if p.exitcode != 0 and wid not in self.stopped and not s.check([f"report/{wid}"]):
                self.dead[wid] = p.exitcode
                s.set(f"dead/{wid}", str(p.exitcode))
                log.warning("worker %d (pid %d) died with exit code %s", wid, p.pid, p.exitcode)
                if wid in self.standby and s.check([f"joiner_error/{wid}"]):
                    self._standby_failed(wid)
            elif wid in self.standby and wid in self.ready:
                self.standby_failures = 0
            self.active.discard(wid)
            self.standby.discard(wid)
            self.slot_of.pop(wid, None)
            del self.procs[wid]
        for wid in [w for w in self.active if s.check([f"bench/{w}"])]:  # a standby again
            s.delete_key(f"bench/{wid}")
            self.active.discard(wid)
            self.standby.add(wid)
            self.ready.add(wid)
        for wid in [w for w in self.standby if s.check([f"assign/{w}"])]:
            self.standby.discard(wid)
            self.active.add(wid)
        self.beat()
        if stopping or not self.started or self.gave_up:
            return
        free = self.slots - len(self.active) - len(self.standby)
        cap = self.slots if self.cfg.standby is None else self.cfg.standby
        for _ in range(min(free, cap - len(self.standby))):
            self.new_standby()
            free -= 1
        while free > 0 and s.add("spawn_claimed", 0) < s.add("spawn_req", 0):
            if s.add("spawn_claimed", 1) > s.add("spawn_req", 0):
                s.add("spawn_claimed", -1)
                break
            self.new_standby()
            free -= 1

    def stop(self, kill: bool = False, wait: float = 30.0) -> None:
        deadline = time.monotonic() + (0 if kill else wait)
        for p in self.procs.values():
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for wid, p in self.procs.items():
            if p.is_alive():  # e.g. a standby still starting up on a loaded machine
                self.stopped.add(wid)
                p.terminate()
        for p in self.procs.values():
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self.poll(stopping=True)
        self.store.set(f"agent_done/{self.node}", "1")

    def run_until_shutdown(self, poll: float = 0.02) -> None:
        """Serve until the host says shutdown (then let children finish) or abort."""
        try:
            while True:
                if self.store.check(["abort"]):
                    self.stop(kill=True)
                    raise LaunchError("the job was aborted by its host (a worker failed)")
                if self.store.check(["shutdown"]):
                    self.stop()
                    return
                self.poll(stopping=False)
                time.sleep(poll)
        except (RuntimeError, OSError) as exc:  # store gone: the host died or finished
            if isinstance(exc, LaunchError):
                raise
            self.stop(kill=True)
            raise LaunchError(f"node {self.node}: lost the job's store ({exc})") from None


def join_elastic(store: dist.TCPStore, endpoint: tuple[str, int],
                 nproc_per_node: int | None = None, devices: list[str] | None = None) -> int:
    """A non-host machine: serve the job whose store is `store` (at `endpoint`) until it
    ends. Returns this node's number."""
    agent = NodeAgent(store, endpoint[0], endpoint[1], nproc_per_node, devices)
    log.info("node %d joined the job at %s:%d with %d slot(s)", agent.node, *endpoint,
             agent.slots)
    agent.run_until_shutdown()
    return agent.node
