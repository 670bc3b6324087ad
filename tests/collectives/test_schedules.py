"""Schedules compute their collective; tree packing is valid and near the max-flow bound."""

import itertools

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.collectives import costmodel, schedule
from weft.collectives.autotune import choose, schedule_for
from weft.collectives.fabric import Fabric
from weft.collectives.packing import broadcast_bound, pack
from weft.collectives.ring import ring, ring_order, ring_rate
from weft.collectives.tree import dbtree, double_binary_trees
from weft.errors import TopologyError
from weft.topology import Topology, dgx1, full_mesh
from weft.topology import ring as ring_topo


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("collective", schedule.COLLECTIVES)
def test_ring_and_dbtree_schedules_compute_the_collective(n, collective):
    for root in sorted({0, n - 1}):
        schedule.check(ring(collective, n, root=root))
        schedule.check(dbtree(collective, n, root=root))


def test_schedule_check_catches_a_wrong_schedule():
    s = ring("allreduce", 4)
    s.steps.pop()  # drop the last all-gather step
    with pytest.raises(ValueError, match="expected"):
        schedule.check(s)
    s = ring("allreduce", 3)
    s.steps.insert(0, list(s.steps[0]))  # reduce the same data twice
    with pytest.raises(ValueError, match="twice"):
        schedule.check(s)


def test_double_binary_trees_are_spanning_and_complementary():
    for n in range(2, 12):
        trees = double_binary_trees(n)
        for par, _ in trees:
            g = nx.DiGraph([(p, c) for c, p in par.items()])
            g.add_nodes_from(range(n))
            assert nx.is_arborescence(g)
        if n >= 4:  # few ranks are interior in both trees
            inner = [set(par.values()) for par, _ in trees]
            assert len(inner[0] & inner[1]) <= n // 3


def test_ring_order_follows_the_fast_links_of_dgx1():
    f = Fabric(dgx1(pcie=False))
    order = ring_order(f)
    assert sorted(order) == list(range(8))
    assert all(f.direct(order[i], order[(i + 1) % 8]) for i in range(8))
    assert ring_rate(f, order) == pytest.approx(50e9)  # a ring of double NVLinks exists
    assert ring_rate(f, list(range(8))) < 50e9


def _check_packing(fabric, p):
    n = fabric.n
    load = {}
    for par, rate in p.trees:
        assert rate > 0
        g = nx.DiGraph([(u, c) for c, u in par.items()])
        g.add_nodes_from(range(n))
        assert nx.is_arborescence(g) and g.in_degree(p.root) == 0, par
        for c, u in par.items():
            pairs = {"down": [(u, c)], "up": [(c, u)], "both": [(u, c), (c, u)]}[p.mode]
            for a, b in pairs:
                for e in fabric.route(a, b):
                    load[e] = load.get(e, 0.0) + rate
    for e, used in load.items():
        assert used <= fabric.capacity(e) * (1 + 1e-6), (e, used, fabric.capacity(e))
    assert p.rate == pytest.approx(sum(r for _, r in p.trees), rel=1e-6)


def _partition_bound(fabric):
    """Nash-Williams/Tutte: the best fractional spanning-tree packing (trees used both
    ways, symmetric links) is min over partitions P of cut(P) / (|P| - 1)."""
    n, best = fabric.n, float("inf")

    def partitions(items):
        if not items:
            yield []
            return
        first, rest = items[0], items[1:]
        for p in partitions(rest):
            for i in range(len(p)):
                yield p[:i] + [[first] + p[i]] + p[i + 1:]
            yield [[first]] + p

    for part in partitions(list(range(n))):
        if len(part) < 2:
            continue
        where = {v: i for i, blk in enumerate(part) for v in blk}
        cut = sum(fabric.capacity((fabric.devices[a], fabric.devices[b]))
                  for a in range(n) for b in range(a + 1, n)
                  if where[a] != where[b] and fabric.direct(a, b))
        best = min(best, cut / (len(part) - 1))
    return best


@pytest.mark.parametrize("gpus", [range(8), [0, 1, 2, 3], [0, 1, 4, 5], [0, 3, 4, 7, 2], [1, 2, 5, 6, 7]])
def test_packing_on_dgx1_subsets_reaches_the_bound(gpus):
    topo = dgx1(pcie=False).subset([f"gpu{i}" for i in gpus])
    f = Fabric(topo)
    for root in (0, f.n - 1):
        p = pack(f, root=root, mode="down")
        _check_packing(f, p)
        assert p.rate >= 0.95 * broadcast_bound(f, root)
    p = pack(f, mode="both")
    _check_packing(f, p)
    assert p.optimum == pytest.approx(_partition_bound(f), rel=1e-6)
    assert p.rate >= 0.95 * p.optimum


@st.composite
def graphs(draw):
    n = draw(st.integers(3, 6))
    speeds = st.sampled_from([1, 2, 3, 4])
    edges = {(i, i + 1): draw(speeds) for i in range(n - 1)}  # connected: a path ...
    for a, b in itertools.combinations(range(n), 2):  # ... plus random extra links
        if (a, b) not in edges and draw(st.booleans()):
            edges[a, b] = draw(speeds)
    t = Topology(name="random")
    for i in range(n):
        t.add_device(f"d{i}")
    for (a, b), s in edges.items():
        t.add_link(f"d{a}", f"d{b}", s * 10e9)
    return t


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.data())
def test_packing_on_random_graphs_reaches_the_bound(topo, data):
    f = Fabric(topo)
    root = data.draw(st.integers(0, f.n - 1))
    p = pack(f, root=root, mode="down")
    _check_packing(f, p)
    assert p.rate >= 0.95 * broadcast_bound(f, root)
    p = pack(f, root=root, mode="both")
    _check_packing(f, p)
    assert p.optimum == pytest.approx(_partition_bound(f), rel=1e-6)
    assert p.rate >= 0.95 * p.optimum


def test_packed_trees_compile_to_correct_schedules():
    f = Fabric(dgx1(pcie=False))
    for c in schedule.COLLECTIVES:
        for alg in ("packing", "packing:2", "ring", "dbtree", "flat"):
            schedule.check(schedule_for(f, c, alg, root=3))


def test_cost_model_is_consistent_with_the_bound():
    f = Fabric(dgx1(pcie=False))
    size = 256 << 20
    for c in ("broadcast", "allreduce", "reduce_scatter", "all_gather", "reduce"):
        bound = costmodel.lower_bound(c, f, size)
        for alg in ("ring", "dbtree", "packing"):
            s = schedule_for(f, c, alg)
            assert costmodel.predict(s, f, size, 4 << 20) >= bound * 0.999
    # contention: two transfers over one link take twice as long as one
    t = ring_topo(3)
    ft = Fabric(t)
    one = schedule.Schedule("broadcast", 3, "x", [schedule.Segment(0, 1)],
                            [[schedule.Transfer(0, 1, 0, False)]], root=0)
    p0 = costmodel.CostParams(alpha=0, reduce_bw=1e30, step_overhead=0)
    tt = costmodel.predict(one, ft, 1 << 20, 1 << 30, p0)
    assert tt == pytest.approx((1 << 20) / 25e9 + 1e-6)
    # packing beats the ring by a wide margin on DGX-1 for big broadcasts
    best = choose(f, "broadcast", size)
    ring_t = costmodel.predict(schedule_for(f, "broadcast", "ring"), f, size, best.chunk_bytes)
    assert best.algorithm.startswith("packing") and ring_t / best.predicted > 1.5


def test_bad_fabrics_are_refused():
    t = full_mesh(4)
    t.add_device("lonely")
    with pytest.raises(TopologyError, match="disconnected"):
        Fabric(t, ["gpu0", "gpu1", "lonely"])
    with pytest.raises(TopologyError, match="not in topology"):
        Fabric(t, ["gpu0", "gpu9"])
    with pytest.raises(TopologyError, match="more than one rank"):
        Fabric(t, ["gpu0", "gpu0"])
    with pytest.raises(TopologyError, match="switch"):
        Fabric(dgx1(), ["gpu0", "pcie0"])


def test_shallow_trees_keep_the_rate_and_do_not_get_deeper():
    from weft.collectives.packing import _columns, _solve, tree_depth

    f = Fabric(dgx1(pcie=False))
    for mode, root in (("down", 0), ("both", 0), ("down", 3)):
        links, caps, _, deep, deep_cols, (shallow, shallow_cols) = _columns(f, root, mode, 300)
        _, _, opt = _solve(list(deep_cols), links, caps)
        _, _, got = _solve(list(shallow_cols), links, caps)
        assert got == pytest.approx(opt, rel=1e-6)  # the optimal rate is kept
        d_deep = max(tree_depth(t, f.n, mode) for t in deep)
        d_shallow = max(tree_depth(t, f.n, mode) for t in shallow)
        assert d_shallow < d_deep  # the LP's first solution has chains; these are shallower
        for k in (2, 4, 8, 16):
            p = pack(f, root=root, mode=mode, max_trees=k)
            _check_packing(f, p)
            assert max(tree_depth(t, f.n, mode) for t, _ in p.trees) <= d_deep
        if mode == "down":
            assert pack(f, root=root, mode=mode).rate >= 0.95 * broadcast_bound(f, root)


def test_trees_used_both_ways_are_hung_from_their_centre():
    chain = {1: 0, 2: 1, 3: 2, 4: 3}  # 0-1-2-3-4, rooted at an end
    s = schedule.from_trees("allreduce", 5, [(chain, 1.0)], "packing")
    schedule.check(s)
    assert s.nsteps == 4  # reduce to node 2 and back: 2 + 2 steps, not 4 + 4
    b = schedule.from_trees("broadcast", 5, [(chain, 1.0)], "packing", root=0)
    assert b.nsteps == 4  # broadcast keeps its root


def test_copy_cost_charges_every_byte_a_rank_sends_or_receives():
    from weft.collectives.emulate.shapes import star_slow

    f = Fabric(star_slow(4, fast=1e15, slow=1e15), [f"h{i}" for i in range(4)])
    size = 64 << 20
    p = costmodel.CostParams(alpha=0, reduce_bw=1e30, step_overhead=0, copy_bw=1e9)
    flat = schedule_for(f, "broadcast", "flat", 0)
    assert flat.nsteps == 1 and len(flat.steps[0]) == 3
    # one step: the root copies the data out three times
    assert costmodel.predict(flat, f, size, size, p) == pytest.approx(3 * size / 1e9, rel=1e-3)
    # sharing 2 cores: 6 copies of the data (3 out, 3 in) over 2 cores
    p2 = costmodel.CostParams(alpha=0, reduce_bw=1e30, step_overhead=0, copy_bw=1e9, cores=2)
    assert costmodel.predict(flat, f, size, size, p2) == pytest.approx(3 * size / 1e9, rel=1e-3)
    p1 = costmodel.CostParams(alpha=0, reduce_bw=1e30, step_overhead=0, copy_bw=1e9, cores=1)
    assert costmodel.predict(flat, f, size, size, p1) == pytest.approx(6 * size / 1e9, rel=1e-3)


def test_allreduce_trees_are_as_shallow_as_the_graph():
    """Trees used both ways may hang from any rank: on the DGX-1 mesh (radius 2)
    the optimal all-reduce packing is found with trees of radius 2, so the
    compiled schedule has 2 + 2 steps (a search rooted at rank 0 only finds 3 + 3)."""
    from weft.collectives.packing import tree_depth

    f = Fabric(dgx1(pcie=False))
    p = pack(f, mode="both", max_trees=16)
    assert p.rate == pytest.approx(p.optimum, rel=1e-6)
    assert all(tree_depth(t, f.n, "both") == 2 for t, _ in p.trees)
    assert all(set(t) == set(range(f.n)) - {p.root} for t, _ in p.trees)  # hung from root
    assert schedule.from_trees("allreduce", f.n, p.trees, "packing").nsteps == 4
