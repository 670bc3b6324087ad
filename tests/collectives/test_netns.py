"""The network-namespace cluster fixture: a real graph of shaped veth links."""

import os
import subprocess

import pytest
import torch
import torch.distributed as dist

from weft.collectives.emulate.netns import (
    NetnsCluster,
    NetnsError,
    available,
    destination_paths,
    sweep_stale,
)
from weft.collectives.emulate.shapes import SHAPES, star_slow


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_forwarding_paths_are_consistent(shape):
    topo = SHAPES[shape]()
    paths = destination_paths(topo)
    names = topo.device_names
    for a in names:
        for b in names:
            if a == b:
                continue
            p = paths[a, b]
            assert p[0] == a and p[-1] == b
            assert all(topo.graph.has_edge(u, v) for u, v in zip(p, p[1:]))
            if len(p) > 2:  # the next hop forwards along the rest of the same path
                assert paths[p[1], b] == p[1:]


def _smoke(topo, ranks, paths):
    from weft.collectives.autotune import schedule_for
    from weft.collectives.executor import execute
    from weft.collectives.fabric import Fabric
    from weft.topology.io import from_dict

    f = Fabric(from_dict(topo), ranks, paths={(a, b): p for a, b, p in paths})
    x = torch.arange(30000, dtype=torch.float32) * (dist.get_rank() + 1)
    ref = x.clone()
    dist.all_reduce(ref)
    out = {}
    for alg in ("packing", "ring"):
        y = x.clone()
        execute(schedule_for(f, "allreduce", alg), y, chunk_bytes=16 << 10, timeout=60)
        out[alg] = torch.equal(y, ref)
    b = x.clone()
    execute(schedule_for(f, "broadcast", "packing", 2), b, chunk_bytes=16 << 10, timeout=60)
    out["broadcast"] = torch.equal(b, torch.arange(30000, dtype=torch.float32) * 3)
    return out


def _fail():
    raise RuntimeError("boom")


def _netns_names():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.netns
def test_star_cluster_runs_collectives_and_cleans_up():
    ok, why = available()
    if not ok:
        pytest.skip(why)
    c = NetnsCluster(star_slow(4), mbit_per_gbs=20.0)
    with c:
        made = list(c.ns.values())
        listed = _netns_names()
        assert all(ns in listed for ns in made)
        # a host reaches another host through the switch namespace
        h1, h2, sw = c.ns["h1"], c.ns["h2"], c.addr["switch"]
        route = subprocess.run(["ip", "-n", h1, "route", "get", c.addr["h2"]],
                               capture_output=True, text=True).stdout
        assert f"via {sw}" in route
        qdisc = subprocess.run(["tc", "-n", h2, "qdisc", "show"], capture_output=True,
                               text=True).stdout
        assert "tbf" in qdisc and "rate 500Mbit" in qdisc  # 25 GB/s * 20 Mbit per GB/s
        f = c.fabric()
        res = c.run(f"{__file__}:_smoke",
                    dict(topo=f.topology.to_dict(), ranks=c.ranks,
                         paths=[[a, b, p] for (a, b), p in c.paths.items()]), timeout=120)
        assert res == [{"packing": True, "ring": True, "broadcast": True}] * 4
        with pytest.raises(NetnsError, match="rank"):
            c.run(f"{__file__}:_fail", timeout=60)
    listed = _netns_names()
    assert not any(ns in listed for ns in made)


@pytest.mark.netns
def test_namespaces_of_a_killed_run_are_swept_and_live_ones_kept():
    ok, why = available()
    if not ok:
        pytest.skip(why)
    p = subprocess.Popen(["true"])
    p.wait()  # its pid no longer runs: a run that was SIGKILLed
    import os

    dead, live = f"weft-{p.pid}-0", f"weft-{os.getpid()}-sweeptest"
    for ns in (dead, live):
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        gone = sweep_stale()
        listed = _netns_names()
        assert dead in gone and dead not in listed
        assert live in listed and live not in gone
    finally:
        for ns in (dead, live):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _where():
    import os

    x = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(x)
    return os.readlink("/proc/self/ns/net"), float(x)


@pytest.mark.netns
def test_several_ranks_per_device_share_its_namespace():
    ok, why = available()
    if not ok:
        pytest.skip(why)
    from weft.topology.model import Topology

    t = Topology(name="pair")
    for h in ("h0", "h1"):
        t.add_device(h, host=h)
    t.add_link("h0", "h1", 125e6, kind="net")
    with NetnsCluster(t, mbit_per_gbs=8000.0) as c:
        res = c.run(f"{__file__}:_where", timeout=120, per_device=2)
    assert [r[1] for r in res] == [10.0] * 4      # 1 + 2 + 3 + 4 over all four ranks
    ns = [r[0] for r in res]                       # rank r on device r % 2
    assert ns[0] == ns[2] != ns[1] == ns[3]
    assert ns[0] != os.readlink("/proc/self/ns/net")
