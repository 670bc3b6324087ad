"""Emulate a cluster on one Linux machine: one network namespace per device of a
`Topology`, one veth pair per link, each direction shaped with tbf.

    with NetnsCluster(shapes.dgx1_mesh(), mbit_per_gbs=2.0) as c:
        results = c.run("benchmarks/collectives.py:bench", args={...}, timeout=300)

Every device gets a namespace (switches forward, compute devices also run a
rank) and one stable address 10.213.H.L/32. Routes are /32 per destination:
a neighbour over the direct link, anyone else via the next hop of a
shortest-path tree rooted at the destination, so every host forwards along
consistent paths (exposed as `paths`, which `fabric()` gives the cost model).
Link rates are scaled: `mbit_per_gbs` Mbit/s of emulated link per GB/s of
topology bandwidth. Links use a jumbo MTU (65000 bytes, the tbf burst at
least two packets): with Ethernet's 1500 every rank and forwarding host pays
per-packet kernel work that real NVLink/InfiniBand do not, which made the
emulation CPU-bound on small machines (measured on a 50 Mbit/s link: 95.6%
of the rate one way, 78% both ways with MTU 1500; 99.9% / 96.8% with 65000). Everything made is removed on exit, on error, at
interpreter exit and on SIGINT/SIGTERM; what a SIGKILLed run left (its pid gone) is removed
before the next cluster is built (`sweep_stale`). Needs root; `available()` says why not.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import networkx as nx

from weft.collectives.fabric import Fabric
from weft.errors import WeftError
from weft.topology.model import Topology

PORT = 29533
_LIVE: set[str] = set()  # namespaces this process made and has not removed yet


class NetnsError(WeftError, RuntimeError):
    pass


def _sh(cmd: list[str], stdin: str | None = None, timeout: float = 20.0) -> str:
    try:
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(cmd)}: {exc}") from None
    if r.returncode != 0:
        raise NetnsError(f"{' '.join(cmd[:6])}...: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def available() -> tuple[bool, str]:
    """(True, "") if namespaces can be made here, else (False, why)."""
    if not sys.platform.startswith("linux"):
        return False, "network namespaces need Linux"
    name = f"weft-{os.getpid()}-probe"
    try:
        _sh(["ip", "netns", "add", name])
    except NetnsError as exc:
        return False, f"cannot create a network namespace ({exc}); run as root"
    try:
        _sh(["tc", "-V"])
    except NetnsError as exc:
        return False, f"tc is not usable: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
    return True, ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Remove the namespaces an earlier weft process made and could not remove (it was
    SIGKILLed): those named ``weft-<pid>-...`` whose pid no longer runs. Returns them."""
    try:
        listed = _sh(["ip", "netns", "list"])
    except NetnsError:
        return []
    gone = []
    for line in listed.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == "weft" and parts[1].isdigit() \
                and not _pid_alive(int(parts[1])):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
            gone.append(name)
    return gone


def _cleanup_all() -> None:
    for ns in sorted(_LIVE):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        _LIVE.discard(ns)


atexit.register(_cleanup_all)


def destination_paths(topology: Topology) -> dict[tuple[str, str], list[str]]:
    """Hop-count shortest paths (ties: wider links) that destination-based forwarding
    really takes: for each destination, a shortest-path tree rooted at it."""
    g = topology.graph
    rev = g.reverse(copy=False)

    def w(u, v, d):
        return 1.0 + 1e-3 * (1e9 / d["bandwidth"])

    paths = {}
    for dst in g:
        tree = nx.shortest_path(rev, dst, weight=w)  # dst -> ... in the reversed graph
        for src, p in tree.items():
            if src != dst:
                paths[src, dst] = list(reversed(p))
    return paths


class NetnsCluster:
    """A Topology as namespaces, veths, tbf shapers and routes."""

    def __init__(self, topology: Topology, mbit_per_gbs: float = 2.0, prefix: str | None = None,
                 burst_ms: float = 4.0, queue_ms: float = 200.0, mtu: int = 65000):
        topology.validate()
        self.topology = topology
        self.mbit_per_gbs = mbit_per_gbs
        self.prefix = prefix or f"weft-{os.getpid()}-"
        self.burst_ms = burst_ms
        self.queue_ms = queue_ms
        self.mtu = mtu
        names = topology.device_names
        self.index = {d: i for i, d in enumerate(names)}
        self.ns = {d: f"{self.prefix}{i}" for d, i in self.index.items()}
        self.addr = {d: f"10.213.{i // 250}.{i % 250 + 1}" for d, i in self.index.items()}
        self.paths = destination_paths(topology)
        self.ranks = [d.name for d in topology.compute_devices]
        self._made: list[str] = []
        self._old_handlers: dict = {}

    # -- emulated rates --------------------------------------------------------
    def rate(self, bandwidth: float) -> float:
        """Emulated bytes/s for a topology link of `bandwidth` bytes/s."""
        return bandwidth / 1e9 * self.mbit_per_gbs * 1e6 / 8

    def burst(self, rate: float) -> int:
        """tbf's burst (bytes) on a link of `rate` bytes/s: at least two jumbo packets."""
        return max(16000, 2 * self.mtu + 1000, int(rate * self.burst_ms / 1e3))

    def emulated_topology(self) -> Topology:
        """The topology with every link at its emulated rate (for the cost model)."""
        t = Topology(name=f"{self.topology.name}@netns")
        for dev in self.topology.devices:
            t.graph.add_node(dev.name, device=dev)
        for ln in self.topology.links:
            r = self.rate(ln.bandwidth)
            t.add_link(ln.src, ln.dst, r, 50e-6, ln.kind, bidirectional=False)
            t.graph.edges[ln.src, ln.dst]["burst"] = float(self.burst(r))
        return t

    def fabric(self, emulated: bool = True) -> Fabric:
        topo = self.emulated_topology() if emulated else self.topology
        return Fabric(topo, self.ranks, paths=self.paths)

    # -- lifecycle ----------------------------------------------------------
    def __enter__(self) -> "NetnsCluster":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_signal(self, signum, frame):
        self.close()
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    def close(self) -> None:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
            _LIVE.discard(ns)
        self._made.clear()
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers.clear()

    def _ifname(self, a: str, b: str) -> str:
        return f"w{self.index[a]}x{self.index[b]}"  # <= 15 characters up to 9999 devices

    def _build(self) -> None:
        sweep_stale()  # a SIGKILLed run's namespaces would keep their 10.213.x addresses
        g = self.topology.graph
        for d, ns in self.ns.items():
            _sh(["ip", "netns", "add", ns])
            self._made.append(ns)
            _LIVE.add(ns)
            _sh(["ip", "netns", "exec", ns, "sh", "-c",
                 "echo 1 > /proc/sys/net/ipv4/ip_forward; "
                 "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done; "
                 "for f in /proc/sys/net/ipv4/conf/*/send_redirects; do echo 0 > $f; done; "
                 "for f in /proc/sys/net/ipv4/conf/*/accept_redirects; do echo 0 > $f; done"])
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        done = set()
        cmds: dict[str, list[str]] = {ns: [] for ns in self.ns.values()}
        for a, b in g.edges:
            if (b, a) in done:
                continue
            done.add((a, b))
            ia, ib = self._ifname(a, b), self._ifname(b, a)
            _sh(["ip", "link", "add", ia, "netns", self.ns[a], "mtu", str(self.mtu), "type", "veth",
                 "peer", "name", ib, "netns", self.ns[b], "mtu", str(self.mtu)])
            for dev, ifn in ((a, ia), (b, ib)):
                cmds[self.ns[dev]] += [f"addr add {self.addr[dev]}/32 dev {ifn}",
                                       f"link set {ifn} up"]
        for ns, c in cmds.items():
            _sh(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(c) + "\n")
        # shape each direction at the sender (egress of its veth end)
        for a, b in g.edges:
            r = self.rate(g.edges[a, b]["bandwidth"])
            burst = self.burst(r)
            _sh(["tc", "-n", self.ns[a], "qdisc", "add", "dev", self._ifname(a, b), "root", "tbf",
                 "rate", f"{int(r * 8)}bit", "burst", str(burst), "latency", f"{self.queue_ms:g}ms"])
        # /32 routes: neighbours direct, others via the next hop towards them
        for src in g:
            c = []
            for dst in g:
                if dst == src:
                    continue
                nh = self.paths[src, dst][1]
                via = "" if nh == dst else f"via {self.addr[nh]} "
                c.append(f"route add {self.addr[dst]}/32 {via}dev {self._ifname(src, nh)} "
                         f"onlink src {self.addr[src]}" if via else
                         f"route add {self.addr[dst]}/32 dev {self._ifname(src, nh)} "
                         f"src {self.addr[src]}")
            _sh(["ip", "-n", self.ns[src], "-batch", "-"], stdin="\n".join(c) + "\n")

    # -- running ranks --------------------------------------------------------
    def run(self, fn: str, args: dict | None = None, timeout: float = 300.0,
            op_timeout: float = 120.0, per_device: int = 1) -> list:
        """Run `fn` ("module:func" or "path/file.py:func") as `per_device` ranks per compute
        device (rank r on `self.ranks[r % devices]`: ranks on one device share its namespace,
        and talk to each other unshaped), each in its namespace; return their results."""
        if per_device < 1:
            raise ValueError(f"per_device must be >= 1, got {per_device!r}")
        devices = len(self.ranks)
        n = devices * per_device
        master = self.addr[self.ranks[0]]
        with tempfile.TemporaryDirectory(prefix="weft-netns-") as tmp:
            procs = []
            env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR",
                       PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
            try:
                for r in range(n):
                    dev = self.ranks[r % devices]
                    ifname = self._ifname(dev, next(iter(self.topology.graph.successors(dev))))
                    spec = {"fn": fn, "args": args or {}, "rank": r, "world": n,
                            "init": f"tcp://{master}:{PORT}", "out": f"{tmp}/r{r}.pkl",
                            "timeout": op_timeout}
                    cmd = ["ip", "netns", "exec", self.ns[dev], sys.executable, "-m",
                           "weft.collectives.emulate.rank", json.dumps(spec)]
                    procs.append(subprocess.Popen(cmd, env=dict(env, GLOO_SOCKET_IFNAME=ifname),
                                                  start_new_session=True))
                deadline = time.monotonic() + timeout
                while any(p.poll() is None for p in procs):
                    bad = [r for r, p in enumerate(procs) if p.poll() not in (None, 0)]
                    if bad:
                        raise NetnsError(f"rank {bad[0]} failed (exit code "
                                         f"{procs[bad[0]].returncode}); see its output above")
                    if time.monotonic() > deadline:
                        raise NetnsError(f"ranks did not finish within {timeout:.0f} s")
                    time.sleep(0.05)
                bad = [r for r, p in enumerate(procs) if p.returncode != 0]
                if bad:
                    raise NetnsError(f"rank {bad[0]} failed (exit code {procs[bad[0]].returncode})")
                return [pickle.loads(Path(f"{tmp}/r{r}.pkl").read_bytes()) for r in range(n)]
            finally:
                for p in procs:
                    if p.poll() is None:
                        os.killpg(p.pid, signal.SIGKILL)
                        p.wait(timeout=10)
