"""The executor's CPU costs in the collectives' cost model, and fitting them to runs."""

import pytest

from weft.collectives.autotune import ranked, schedule_for
from weft.collectives.costmodel import CostParams, fit, lower_bound, predict
from weft.collectives.emulate.shapes import two_node
from weft.collectives.fabric import Fabric
from weft.collectives.ring import ring


@pytest.fixture(scope="module")
def fabric():
    t = two_node(3)
    return Fabric(t, [d.name for d in t.compute_devices])


def test_relayed_bytes_cost_cpu_only_where_a_host_relays(fabric):
    base = CostParams(alpha=1e-5, cores=2.0)
    relay = CostParams(alpha=1e-5, cores=2.0, forward_bw=1e8)
    direct = ring("allreduce", 2)  # ranks 0 and 1 share a link
    pair = Fabric(fabric.topology, fabric.devices[:2])
    assert predict(direct, pair, 1 << 20, 1 << 18, relay) == pytest.approx(
        predict(direct, pair, 1 << 20, 1 << 18, base))
    hops = ring("allreduce", 6, [0, 4, 2, 3, 1, 5])  # a1 -> b? routes through another host
    assert any(len(fabric.route(a, b)) > 1 for a, b in [(0, 4), (4, 2), (2, 3), (1, 5)])
    assert predict(hops, fabric, 1 << 20, 1 << 18, relay) > predict(hops, fabric, 1 << 20,
                                                                     1 << 18, base)


def test_overlap_never_predicts_more(fabric):
    s = schedule_for(fabric, "allreduce", "packing:2")
    for p in (CostParams(alpha=2e-4, cores=2.0, copy_bw=1e9),
              CostParams(alpha=1e-6, copy_bw=5e8, forward_bw=1e9, cores=1.0)):
        from dataclasses import replace

        assert predict(s, fabric, 4 << 20, 64 << 10, replace(p, overlap=True)) <= \
            predict(s, fabric, 4 << 20, 64 << 10, p)


def test_fit_recovers_the_cpu_costs_and_the_choice(fabric):
    true = CostParams(alpha=3e-4, reduce_bw=0.5e9, step_overhead=3e-5, cores=2.0,
                      link_efficiency=0.97, copy_bw=6e8, forward_bw=1.5e8)
    base = CostParams(alpha=1e-5, reduce_bw=0.5e9, step_overhead=2e-5, cores=2.0,
                      link_efficiency=0.97)
    samples = []
    for alg in ("ring", "dbtree", "packing:2"):
        s = schedule_for(fabric, "allreduce", alg)
        for size in (512 << 10, 8 << 20):
            for chunk in (32 << 10, 1 << 20):
                samples.append((s, fabric, size, chunk, predict(s, fabric, size, chunk, true)))
    got, err = fit(samples, base)
    assert err < 0.02
    assert got.alpha == pytest.approx(true.alpha, rel=0.1)
    for size in (256 << 10, 2 << 20, 32 << 20):  # sizes the fit did not see
        want = ranked(fabric, "allreduce", size, params=true)[0]
        pick = ranked(fabric, "allreduce", size, params=got)[0]
        assert predict(pick.schedule, fabric, size, pick.chunk_bytes, true) <= \
            want.predicted * 1.02


def _with_burst(fabric, burst):
    from weft.topology.model import Topology

    t = Topology(name="burst")
    g = fabric.topology.graph
    for dev in fabric.topology.devices:
        t.graph.add_node(dev.name, device=dev)
    for a, b, d in g.edges(data=True):
        t.add_link(a, b, d["bandwidth"], d["latency"], bidirectional=False)
        t.graph.edges[a, b]["burst"] = float(burst)
    return Fabric(t, fabric.devices)


def test_a_shaper_burst_passes_small_transfers_at_once_but_not_a_stream(fabric):
    # token-bucket links (the emulation's tbf): a message within the burst on an idle
    # link takes no link time; a long pipelined stream drains the credit and runs at
    # the link's rate
    slow = Fabric(two_node(3, intra=1e7, inter=4e6), fabric.devices)
    burst = 128 << 10
    shaped = _with_burst(slow, burst)
    assert shaped.burst(shaped.route(0, 1)[0]) == burst and slow.burst(slow.route(0, 1)[0]) == 0
    s = schedule_for(slow, "allreduce", "dbtree")
    p = CostParams(alpha=1e-5, cores=2.0)
    small, small_b = (predict(s, f, 128 << 10, 1 << 20, p) for f in (slow, shaped))
    assert small_b < 0.3 * small  # link time gone: what is left is CPU and latency
    big, big_b = (predict(s, f, 64 << 20, 64 << 10, p) for f in (slow, shaped))
    # a link passes at most its burst more than its rate over any time: the stream stays
    # within a burst per link of the max-flow bound, and near the unshaped prediction
    assert 0.95 * big < big_b < big
    assert big_b >= lower_bound("allreduce", slow, 64 << 20) - 2 * burst / 4e6
    assert shaped.key != slow.key


def test_emulated_topology_tells_the_model_tbf_s_burst():
    from weft.collectives.emulate.netns import NetnsCluster

    c = NetnsCluster(two_node(2), mbit_per_gbs=4.0)
    fab = c.fabric()
    for e in {e for r in fab.routes.values() for e in r}:
        assert fab.burst(e) == c.burst(fab.capacity(e)) >= 2 * c.mtu
