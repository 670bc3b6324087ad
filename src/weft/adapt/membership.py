"""Elastic membership agreed through a long-lived c10d TCPStore.

Every worker has a stable worker id (`wid`). Membership epoch `e` is the
ordered list of wids stored under `members/<e>`; a worker's rank in epoch
`e` is its position in that list. Each epoch gets a NEW gloo process group
rendezvousing under the store prefix `pg/<e>/`; the old group is destroyed,
the processes stay. Keys:

    members/<e>       JSON list of wids (written by the launcher for e=0)
    standby_seq, standby/<k>  registry of warm standby workers (their wids)
    assign/<wid>      the epoch a standby joiner must join
    note/<e>          why epoch e has fewer members than asked (e.g. standbys failed)
    nostandby/<n>     node agent n gave up starting standbys (they failed); the reason
    spawn_req         count of standbys asked for when none was free; node agents
                      with a free slot claim them (spawn_claimed) and start one
    node_seq, node/<n>, nodehb/<n>, free/<n>  node agents, their heartbeats and
                      process slots not running a member (see weft.adapt.agent)
    hb/<wid>          heartbeat (unix time), dead/<wid> set by the node agent
    recover/<e>/<wid> a survivor of a failure in epoch e; decide/<e> counter
    job_done, shutdown

Planned resize: rank 0 of epoch e writes members/<e+1>, taking live warm
standbys from the registry when growing (asking the node agents for more if
there are too few); leavers are the highest ranks.
Failure: every survivor registers under recover/<e>/ (and bumps decide/<e>,
which makes members still blocked in a collective give up); the lowest-ranked
live survivor decides: it waits until each member of e has registered or is
known dead (agent notice or stale heartbeat), bounded by a timeout, then
writes members/<e+1> (compare-and-set: one decision). A decider that dies
first is replaced by the next survivor once its heartbeat is stale.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time

import torch.distributed as dist

from weft.errors import WeftError

log = logging.getLogger("weft.adapt")


class MembershipError(WeftError, RuntimeError):
    pass


class MemberLost(MembershipError):
    """A member of the epoch being formed died or never arrived: recover again."""


def _td(s: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=s)


def connect(host: str, port: int, timeout: float, prefix: str = "") -> dist.Store:
    """A client of the job's store (under `prefix` when it is shared, e.g. torchrun's)."""
    store = dist.TCPStore(host, port, is_master=False, timeout=_td(timeout))
    return dist.PrefixStore(prefix, store) if prefix else store


def beat_age(store: dist.Store, key: str) -> float | None:
    """Seconds since the heartbeat under `key` (None: it never beat)."""
    if not store.check([key]):
        return None
    return time.time() - float(store.get(key))


class Heartbeat(threading.Thread):
    """Writes hb/<wid> every `interval` s on its own store connection."""

    def __init__(self, host: str, port: int, wid: int, interval: float, prefix: str = ""):
        super().__init__(daemon=True, name=f"weft-hb{wid}")
        self.store = connect(host, port, 30.0, prefix)
        self.wid, self.interval = wid, interval
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.store.set(f"hb/{self.wid}", repr(time.time()))
            except Exception:  # noqa: BLE001 - store gone: the job is over
                return
            self.stop.wait(self.interval)


_ABANDONED: list = []


def _drop_group(failed: bool) -> None:
    """Destroy the current default group. After a failure, a collective abandoned on it
    would make shutdown (or gloo's abort) block until the full timeout, so the old group
    is instead unregistered and kept alive here; its threads end on that timeout."""
    if not failed:
        dist.destroy_process_group()
        return
    from torch.distributed import distributed_c10d as c10d

    try:
        _ABANDONED.append(c10d.GroupMember.WORLD)
        c10d._update_default_pg(None)
        for table in ("pg_map", "pg_names", "pg_group_ranks", "pg_backend_config", "pg_to_tag",
                      "tags_to_pg", "pg_coalesce_state"):
            getattr(c10d._world, table).clear()
        c10d._unregister_all_process_groups()
        c10d._world.group_count = 0
    except Exception:  # noqa: BLE001 - private API moved: orderly (slower) shutdown
        if dist.is_initialized():
            dist.destroy_process_group()


class Membership:
    def __init__(self, store: dist.TCPStore, wid: int, pg_timeout: float, join_timeout: float,
                 hb_timeout: float = 3.0):
        self.store, self.wid = store, wid
        self.pg_timeout, self.join_timeout, self.hb_timeout = pg_timeout, join_timeout, hb_timeout
        self.standby_timeout = join_timeout / 2  # scale-out's wait for standbys (< join's)
        self.epoch = -1
        self.members: list[int] = []

    # -- helpers -------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.members.index(self.wid) if self.wid in self.members else -1

    @property
    def world(self) -> int:
        return len(self.members)

    def _get(self, key: str, timeout: float | None = None):
        self.store.wait([key], _td(timeout or self.join_timeout))
        return json.loads(self.store.get(key))

    def _set(self, key: str, value) -> None:
        self.store.set(key, json.dumps(value))

    def join(self, epoch: int, failed: bool = False) -> bool:
        """Enter membership epoch `epoch`: read its members, build its process group.
        Returns False if this worker is not a member (it must leave)."""
        members = self._get(f"members/{epoch}")
        if dist.is_initialized():
            _drop_group(failed)
        self.epoch, self.members = epoch, list(members)
        if self.wid not in members:
            return False
        # Rendezvous on the store first (bounded by join_timeout: starting processes can be
        # slow); the group itself then uses the short pg_timeout for every collective.
        self.store.set(f"arrived/{epoch}/{self.wid}", "1")
        deadline = time.monotonic() + self.join_timeout
        while missing := [w for w in members if not self.store.check([f"arrived/{epoch}/{w}"])]:
            lost = [w for w in missing if self._dead(w)]
            if lost or time.monotonic() > deadline:
                raise MemberLost(f"member(s) {lost or missing} of membership epoch {epoch} "
                                 + ("died before joining" if lost else
                                    f"did not join within {self.join_timeout:g} s"))
            time.sleep(0.01)
        dist.init_process_group("gloo", store=dist.PrefixStore(f"pg/{epoch}/", self.store),
                                rank=self.rank, world_size=self.world,
                                timeout=_td(self.pg_timeout))
        return True

    def wait_assignment(self, poll: float = 0.02) -> int | None:
        """Standby joiner: block until assigned an epoch (or the job shuts down -> None)."""
        key = f"assign/{self.wid}"
        while True:
            if self.store.check([key]):
                return int(self._get(key))
            if self.store.check(["shutdown"]):
                return None
            time.sleep(poll)

    # -- planned resize ----------------------------------------------------
    def resize(self, new_world: int) -> bool:
        """Collective over the current members. True if this worker stays."""
        e = self.epoch
        if self.rank == 0:
            new = list(self.members[:new_world])
            grow = new_world - self.world
            if grow > 0:
                joiners, why = self._take_standbys(grow)
                new += joiners
                for w in joiners:
                    self._set(f"assign/{w}", e + 1)
                if why:
                    self.store.set(f"note/{e + 1}", why)
            self._set(f"members/{e + 1}", new)
        return self.join(e + 1)

    def note(self, epoch: int) -> str:
        """Why epoch `epoch` got fewer members than asked ("" if it did not)."""
        key = f"note/{epoch}"
        return self.store.get(key).decode() if self.store.check([key]) else ""

    # -- standbys and capacity ----------------------------------------------
    def register_standby(self) -> None:
        """A warm standby announces itself (after its model is built)."""
        self._set(f"standby/{self.store.add('standby_seq', 1)}", self.wid)
        self.store.set(f"ready/{self.wid}", "1")

    def available_standbys(self) -> list[int]:
        """Registered standbys not yet assigned and alive, in registration order."""
        out = []
        for k in range(1, self.store.add("standby_seq", 0) + 1):
            w = int(self._get(f"standby/{k}"))  # (a benched worker registers again)
            if w not in out and not self.store.check([f"assign/{w}"]) and not self._dead(w):
                out.append(w)
        return out

    def _given_up(self) -> str | None:
        """Why no standby will come (every live node agent gave up starting them), else None."""
        nodes = [k for k in range(1, self.store.add("node_seq", 0) + 1) if self._node_alive(k)]
        if not nodes or not all(self.store.check([f"nostandby/{k}"]) for k in nodes):
            return None
        return self.store.get(f"nostandby/{nodes[0]}").decode()

    def _take_standbys(self, n: int) -> tuple[list[int], str]:
        """Up to `n` live standbys, waiting (bounded) for agents to start missing ones;
        and why there are fewer ("" when there are enough)."""
        deadline = time.monotonic() + self.standby_timeout
        asked = 0
        while True:
            avail = self.available_standbys()
            if len(avail) >= n:
                return avail[:n], ""
            if len(avail) + asked < n:  # ask node agents with a free slot to start more
                self.store.add("spawn_req", n - len(avail) - asked)
                asked = n - len(avail)
            why = self._given_up()
            if why:
                log.warning("scale-out wanted %d more worker(s); %d available: %s", n,
                            len(avail), why)
                return avail, why
            if time.monotonic() > deadline:  # grow by what there is (maybe nothing)
                log.warning("scale-out wanted %d more worker(s) but only %d standby worker(s) "
                            "became available within %g s (no free process slot on a live "
                            "node?)", n, len(avail), self.standby_timeout)
                return avail, f"only {len(avail)} standby worker(s) came within " \
                              f"{self.standby_timeout:g} s"
            time.sleep(0.05)

    def _node_alive(self, n: int) -> bool:
        age = beat_age(self.store, f"nodehb/{n}")
        return age is not None and age <= self.hb_timeout and not self.store.check(
            [f"nodegone/{n}"])

    def capacity(self, max_workers: int) -> int:
        """Workers the cluster can host now, at most `max_workers`: the members plus every
        process slot of a live node agent that runs no member nor a starting standby (or,
        without node agents, as under torchrun, the live warm standbys)."""
        nodes = self.store.add("node_seq", 0)
        if not nodes:  # no node agents (torchrun): the warm standbys are the spare capacity
            return min(max_workers, self.world + len(self.available_standbys()))
        free = 0
        for n in range(1, nodes + 1):
            if self.store.check([f"free/{n}"]) and self._node_alive(n):
                free += int(self.store.get(f"free/{n}"))
        return min(max_workers, self.world + free)

    # -- failure -----------------------------------------------------------
    def _dead(self, wid: int) -> bool:
        if self.store.check([f"dead/{wid}"]):
            return True
        age = beat_age(self.store, f"hb/{wid}")
        return age is not None and age > self.hb_timeout

    def recover(self, fits=None) -> tuple[bool, list[int]]:
        """After a failed collective: agree on the survivors and build their group.
        Returns (this worker stays, wids lost).

        The lowest-ranked live survivor decides once every member of the epoch has
        registered or is known dead (bounded by a deadline); if the decider itself dies
        before writing, its heartbeat goes stale and the next survivor decides.
        `fits(n) -> (k, why)`: the largest world of at most `n` workers the job can run
        in (a plan with tp=2 cannot run on 3); the first `k` survivors form the group and
        the others are *benched* (`benched(epoch)`: they wait as warm standbys); `why`
        says why when k < n (`note(epoch)`)."""
        e, old = self.epoch, list(self.members)
        self.store.set(f"recover/{e}/{self.wid}", "1")
        self.store.add(f"decide/{e}", 1)  # tells members still in a collective to give up
        key = f"members/{e + 1}"
        deadline = time.monotonic() + self.pg_timeout + self.hb_timeout + 2.0
        hard = deadline + self.join_timeout
        while not self.store.check([key]):
            if time.monotonic() > hard:
                raise MembershipError(f"no survivor decided membership epoch {e + 1} within "
                                      f"{self.join_timeout:g} s of the deadline")
            up = {w for w in old if self.store.check([f"recover/{e}/{w}"])}
            alive = [w for w in old if w in up and not self._dead(w)]
            pending = [w for w in old if w not in up and not self._dead(w)]
            if (not pending or time.monotonic() > deadline) and alive and alive[0] == self.wid:
                k, why = fits(len(alive)) if fits is not None else (len(alive), "")
                mine = json.dumps({"members": alive[:k], "benched": alive[k:], "note": why})
                won = json.loads(self.store.compare_set(f"decision/{e + 1}", "", mine))
                # the first decision wins; what it benches and why is written before the
                # members, so whoever reads the members can read them too
                if won["benched"]:
                    self._set(f"benched/{e + 1}", won["benched"])
                    self.store.set(f"note/{e + 1}", won["note"])
                self.store.compare_set(key, "", json.dumps(won["members"]))
                break
            time.sleep(0.02)
        stays = self.join(e + 1, failed=True)
        return stays, [w for w in old if w not in self.members]

    def benched(self, epoch: int) -> list[int]:
        """Live workers left out of epoch `epoch` because the job could not use them."""
        key = f"benched/{epoch}"
        return json.loads(self.store.get(key)) if self.store.check([key]) else []

    def bench(self) -> None:
        """This live worker, left out of the group, becomes a warm standby again (its node
        agent counts its slot as a standby's; a resize may take it back)."""
        self.store.delete_key(f"assign/{self.wid}")
        self.store.set(f"bench/{self.wid}", "1")
        self.register_standby()
