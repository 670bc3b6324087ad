"""Topology model, builders, YAML validation and lossless round trips."""

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.errors import TopologyError
from weft.topology import (Topology, build, dgx1, dumps, fat_tree, from_dict, full_mesh, load,
                           multi_node, nvswitch, resolve, ring, save)
from weft.topology.builders import DGX1_NVLINKS


def test_dgx1_is_hybrid_cube_mesh():
    t = dgx1(pcie=False)
    assert len(t) == 8
    # six NVLinks per V100, 25 GB/s each way
    for i in range(8):
        assert sum(t.bandwidth(f"gpu{i}", n) for n in t.neighbors(f"gpu{i}")) == pytest.approx(6 * 25e9)
    assert t.bandwidth("gpu0", "gpu3") == 50e9 and t.bandwidth("gpu0", "gpu1") == 25e9
    assert t.bandwidth("gpu0", "gpu5") == 0  # no direct link across quads except i <-> i+4
    assert len(DGX1_NVLINKS) == 16
    with_pcie = dgx1()
    assert {d.name for d in with_pcie.devices if d.kind == "switch"} == {"pcie0", "pcie1"}
    assert with_pcie.path_bandwidth("gpu0", "gpu5") == 50e9  # widest route: gpu0-gpu4-gpu7-gpu6-gpu5, all NV2


def test_builders_are_connected_and_sized():
    assert len(ring(5).links) == 10
    assert len(full_mesh(4).links) == 12
    assert len(nvswitch(8).compute_devices) == 8
    mn = multi_node(2, 4, intra=50e9, inter=12.5e9)
    assert mn.bandwidth("n0.gpu0", "n1.gpu0") == 12.5e9 and mn.bandwidth("n0.gpu0", "n0.gpu1") == 50e9
    assert set(mn.hosts()) == {"node0", "node1"}
    sw = multi_node(2, 2, style="switch")
    assert sw.path_bandwidth("n0.gpu0", "n1.gpu1") == pytest.approx(12.5e9)
    ft = fat_tree(4)
    assert len(ft.compute_devices) == 16 and len(ft) == 36
    for t in (ring(3), full_mesh(3), dgx1(), nvswitch(4), mn, sw, ft):
        t.validate()


def test_build_specs():
    assert build("ring:6").name == "ring6"
    assert len(build("multi_node:3x2").compute_devices) == 6
    with pytest.raises(TopologyError, match="unknown topology builder 'torus'"):
        build("torus:4")
    with pytest.raises(TopologyError, match="bad arguments"):
        build("ring:a")
    with pytest.raises(TopologyError, match="fat_tree: k must be an even integer"):
        build("fat_tree:3")


GOOD = {"name": "t", "devices": [{"name": "a"}, {"name": "b"}, {"name": "c", "memory": "8GiB"}],
        "links": [{"src": "a", "dst": "b", "bandwidth": "25GB/s"},
                  {"src": "b", "dst": "c", "bandwidth": 1e9, "latency": 2e-6}]}


def _write(tmp_path, data):
    p = tmp_path / "topo.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_load_good(tmp_path):
    t = load(_write(tmp_path, GOOD))
    assert t.bandwidth("a", "b") == 25e9 and t.bandwidth("b", "a") == 25e9
    assert t.device("c").memory == 8 * 2**30


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["links"].append({"src": "a", "dst": "zz", "bandwidth": 1}),
     r"links\[2\]\.dst: unknown device 'zz'"),
    (lambda d: d["links"][1].update(bandwidth=-5),
     r"links\[1\]\.bandwidth: must be > 0, got -5"),
    (lambda d: d["links"].pop(1), r"disconnected: 2 components: \{a, b\}; \{c\}|\{c\}; \{a, b\}"),
    (lambda d: d["links"][0].update(latency="soon"), r"links\[0\]\.latency: cannot parse 'soon'"),
    (lambda d: d["devices"].append({"name": "a"}), r"devices\[3\]\.name: device 'a' is defined twice"),
    (lambda d: d["devices"][0].update(kind="tpu9"), r"devices\[0\]\.kind: unknown kind 'tpu9'"),
    (lambda d: d["links"][0].pop("bandwidth"), r"links\[0\]: missing field 'bandwidth'"),
    (lambda d: d.update(devices=[]), r"devices: must be a non-empty list"),
])
def test_malformed_topologies_name_file_field_value(tmp_path, mutate, message):
    import copy

    data = copy.deepcopy(GOOD)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(TopologyError, match=message) as err:
        load(path)
    assert str(path) in str(err.value)


def test_not_yaml(tmp_path):
    with pytest.raises(TopologyError, match="not valid YAML"):
        load(_write(tmp_path, "devices: [a, b\n"))
    with pytest.raises(TopologyError, match="topology file not found"):
        load(tmp_path / "missing.yaml")


def test_save_is_atomic_and_resolvable(tmp_path):
    p = save(dgx1(), tmp_path / "sub" / "dgx1.yaml")
    assert [x.name for x in p.parent.iterdir()] == ["dgx1.yaml"]  # no temp file left
    assert resolve(str(p)).to_dict() == dgx1().to_dict()


@st.composite
def topologies(draw):
    n = draw(st.integers(2, 7))
    t = Topology(name=draw(st.sampled_from(["x", "y-1", "cluster"])))
    kinds = st.sampled_from(["gpu", "cpu", "switch", "accelerator"])
    pos = st.floats(1e-3, 1e15, allow_nan=False, allow_infinity=False)
    for i in range(n):
        t.add_device(f"d{i}", kind=draw(kinds), memory=draw(pos), flops=draw(pos),
                     host=f"h{draw(st.integers(0, 2))}")
    for i in range(1, n):  # a spanning chain keeps it connected, then random extra links
        j = draw(st.integers(0, i - 1))
        t.add_link(f"d{j}", f"d{i}", draw(pos), draw(st.floats(0, 1e-2)), kind="a")
    for _ in range(draw(st.integers(0, 6))):
        a, b = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        if a != b:
            t.add_link(f"d{a}", f"d{b}", draw(pos), draw(st.floats(0, 1e-2)), kind="b",
                       bidirectional=draw(st.booleans()))
    return t


@settings(max_examples=60, deadline=None)
@given(topologies())
def test_yaml_round_trip_is_lossless(t):
    back = from_dict(yaml.safe_load(dumps(t)))
    assert back.to_dict() == t.to_dict()
    assert {(l.src, l.dst): l for l in back.links} == {(l.src, l.dst): l for l in t.links}
    assert back.devices == t.devices


# -- issue 14 regressions: units in files, builder arguments, readable drawings -----------------
def test_units_for_time_and_flops_in_files(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("devices:\n  - {name: a, flops: 10TFLOPS, memory: 16GiB}\n  - {name: b}\n"
                 "links:\n  - {src: a, dst: b, bandwidth: 25GB/s, latency: 1us}\n")
    t = load(p)
    assert t.device("a").flops == 10e12 and t.device("a").memory == 16 * 2**30
    assert t.link("a", "b").latency == 1e-6
    p.write_text("devices: [{name: a, flops: 10 apples}, {name: b}]\nlinks: []\n")
    with pytest.raises(TopologyError, match=r"devices\[0\]\.flops.*'15.7TFLOPS'"):
        load(p)


def test_saved_yaml_uses_units_and_loads_back_equal(tmp_path):
    from weft.topology import multi_node, save

    t = multi_node(2, 2)
    text = save(t, tmp_path / "c.yaml").read_text()
    assert "memory: 16GiB" in text and "bandwidth: 50GB/s" in text and "latency: 1us" in text
    assert "17179869184" not in text
    back = load(tmp_path / "c.yaml")
    assert back.to_dict() == t.to_dict()


@pytest.mark.parametrize("spec", ["multi_node:2x", "multi_node:x4", "ring:", "ring:8x"])
def test_incomplete_builder_arguments_are_refused(spec):
    from weft.topology import build

    with pytest.raises(TopologyError, match="bad arguments"):
        build(spec)


@pytest.mark.parametrize("spec", ["multi_node:2x4,colour=red", "multi_node:2x4,inter=5",
                                  "ring:8,style=switch", "multi_node:2x4,style="])
def test_unknown_or_non_string_builder_options_are_refused(spec):
    from weft.topology import build

    with pytest.raises(TopologyError):
        build(spec)


def test_a_spec_can_ask_for_the_switch_style_of_multi_node():
    """One NIC per host on one switch: links grow with hosts, not with pairs of hosts."""
    from weft.topology import build

    rail, switch = build("multi_node:6x2"), build("multi_node:6x2,style=switch")
    assert len(switch.compute_devices) == len(rail.compute_devices) == 12
    assert {d.kind for d in switch.devices} >= {"nic", "switch"}
    assert len(switch.links) < len(rail.links)
    nics = [d.name for d in switch.devices if d.kind == "nic"]
    assert len(nics) == 6 and all(switch.graph.has_edge(n, "net") for n in nics)


@pytest.mark.parametrize("spec", ["multi_node:2x4", "multi_node:3x3", "fat_tree:4", "dgx1",
                                  "nvswitch:8", "ring:6"])
def test_drawing_shows_every_link(spec):
    """No two devices share a place, and no link is drawn through a device it does not join
    (before: intra-node links of multi_node:2x4 lay on one line, fat_tree:4's hosts on top of
    each other)."""
    import math

    from weft.topology import resolve
    from weft.topology.draw import layout

    t = resolve(spec)
    pos = layout(t)
    pts = list(pos.values())
    span = max(max(x for x, _ in pts) - min(x for x, _ in pts),
               max(y for _, y in pts) - min(y for _, y in pts))
    eps = 0.015 * span  # about a drawn device's radius
    names = list(pos)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert math.dist(pos[a], pos[b]) > eps, (a, b)
    for u, v in t.graph.to_undirected().edges:
        (x1, y1), (x2, y2) = pos[u], pos[v]
        for w in names:
            if w in (u, v):
                continue
            px, py = pos[w]
            dx, dy = x2 - x1, y2 - y1
            s = max(0.0, min(1.0, ((px - x1) * dx + (py - y1) * dy) / (dx * dx + dy * dy)))
            assert math.dist((px, py), (x1 + s * dx, y1 + s * dy)) > eps, (u, v, "through", w)
