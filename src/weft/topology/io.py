"""Load and save topologies as YAML, with validation that names file and field.

Format::

    name: my-cluster
    devices:
      - {name: gpu0, kind: gpu, memory: 16GiB, flops: 15.7TFLOPS, host: node0}
      - {name: gpu1, host: node0}
    links:            # bidirectional unless `bidirectional: false`
      - {src: gpu0, dst: gpu1, bandwidth: 25GB/s, latency: 1us, kind: nvlink}

A topology can also be named by a builder spec: `dgx1`, `ring:8`,
`full_mesh:4`, `nvswitch:8`, `multi_node:2x4`, `fat_tree:4`; a builder's string option
after a comma: `multi_node:128x8,style=switch` (one NIC per host on one switch instead of a
link per rail and pair of hosts).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import yaml

from weft.atomic import write_text
from weft.errors import TopologyError
from weft.topology.builders import BUILDERS
from weft.topology.model import DEVICE_KINDS, Topology
from weft.units import (fmt_bytes_exact, fmt_flops_exact, fmt_seconds_exact, parse_flops,
                         parse_seconds, parse_size)

_DEVICE_FIELDS = {"name", "kind", "memory", "flops", "host"}
_LINK_FIELDS = {"src", "dst", "bandwidth", "latency", "kind", "bidirectional"}


def from_dict(data: Any, source: str = "<dict>") -> Topology:
    """Build and validate a Topology from a plain dict; errors name source and field."""

    def fail(where: str, msg: str) -> TopologyError:
        return TopologyError(f"{source}: {where}: {msg}")

    if not isinstance(data, dict):
        raise fail("top level", f"expected a mapping with 'devices' and 'links', got {type(data).__name__}")
    unknown = set(data) - {"name", "devices", "links"}
    if unknown:
        raise fail("top level", f"unknown key(s) {sorted(unknown)}; expected name, devices, links")
    devices, links = data.get("devices"), data.get("links", [])
    if not isinstance(devices, list) or not devices:
        raise fail("devices", "must be a non-empty list of devices")
    if not isinstance(links, list):
        raise fail("links", f"must be a list, got {type(links).__name__}")
    topo = Topology(name=str(data.get("name", Path(source).stem)))

    def number(where: str, value: Any, parse=parse_size, allow_zero: bool = True) -> float:
        try:
            x = parse(value, where)
        except ValueError as exc:
            raise fail(where, str(exc).split(": ", 1)[-1]) from None
        if x != x or x < 0 or (not allow_zero and x == 0):
            raise fail(where, f"must be {'> 0' if not allow_zero else '>= 0'}, got {value!r}")
        return x

    for i, d in enumerate(devices):
        where = f"devices[{i}]"
        if not isinstance(d, dict) or "name" not in d:
            raise fail(where, f"each device needs at least a 'name', got {d!r}")
        extra = set(d) - _DEVICE_FIELDS
        if extra:
            raise fail(where, f"unknown field(s) {sorted(extra)}; allowed: {sorted(_DEVICE_FIELDS)}")
        kind = d.get("kind", "gpu")
        if kind not in DEVICE_KINDS:
            raise fail(f"{where}.kind", f"unknown kind {kind!r}; one of {list(DEVICE_KINDS)}")
        name = str(d["name"])
        if name in topo:
            raise fail(f"{where}.name", f"device {name!r} is defined twice")
        kw = {}
        for f, parse in (("memory", parse_size), ("flops", parse_flops)):
            if f in d:
                kw[f] = number(f"{where}.{f}", d[f], parse)
        topo.add_device(name, kind=kind, host=str(d.get("host", "host0")), **kw)

    for i, ln in enumerate(links):
        where = f"links[{i}]"
        if not isinstance(ln, dict):
            raise fail(where, f"expected a mapping, got {ln!r}")
        extra = set(ln) - _LINK_FIELDS
        if extra:
            raise fail(where, f"unknown field(s) {sorted(extra)}; allowed: {sorted(_LINK_FIELDS)}")
        for f in ("src", "dst", "bandwidth"):
            if f not in ln:
                raise fail(where, f"missing field {f!r}")
        for f in ("src", "dst"):
            if str(ln[f]) not in topo:
                raise fail(f"{where}.{f}", f"unknown device {ln[f]!r} (not in devices)")
        if str(ln["src"]) == str(ln["dst"]):
            raise fail(where, f"a link cannot join {ln['src']!r} to itself")
        bw = number(f"{where}.bandwidth", ln["bandwidth"], allow_zero=False)
        lat = number(f"{where}.latency", ln.get("latency", 1e-6), parse_seconds)
        bidir = ln.get("bidirectional", True)
        if not isinstance(bidir, bool):
            raise fail(f"{where}.bidirectional", f"must be true or false, got {bidir!r}")
        topo.add_link(str(ln["src"]), str(ln["dst"]), bw, lat, kind=str(ln.get("kind", "link")),
                      bidirectional=bidir)
    try:
        topo.validate()
    except TopologyError as exc:
        raise TopologyError(f"{source}: {exc}") from None
    return topo


def load(path: str | os.PathLike) -> Topology:
    from weft.files import read_yaml

    return from_dict(read_yaml(path, TopologyError, "topology"), source=str(path))


def dumps(topo: Topology) -> str:
    """YAML with units (16GiB, 25GB/s, 1us, 15.7TFLOPS), in the form `load` reads."""
    d = topo.to_dict()
    for dev in d["devices"]:
        dev["memory"] = fmt_bytes_exact(dev["memory"])
        dev["flops"] = fmt_flops_exact(dev["flops"])
    for ln in d["links"]:
        ln["bandwidth"] = fmt_bytes_exact(ln["bandwidth"], rate=True)
        ln["latency"] = fmt_seconds_exact(ln["latency"])
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=100)


def save(topo: Topology, path: str | os.PathLike) -> Path:
    """Write YAML atomically (temp file in the same folder, then rename)."""
    return write_text(path, dumps(topo))


def build(spec: str) -> Topology:
    """Build from a spec like 'dgx1', 'ring:8', 'multi_node:2x4', 'fat_tree:4',
    'multi_node:2x4,style=switch'."""
    name, _, argstr = spec.partition(":")
    if name not in BUILDERS:
        raise TopologyError(f"unknown topology builder {name!r}; known: {sorted(BUILDERS)} "
                            "(or give a path to a YAML file)")
    fn = BUILDERS[name]
    tokens = argstr.split(",") if argstr else []
    keywords = dict(t.split("=", 1) for t in tokens if "=" in t)  # e.g. style=switch
    args = ",".join(t for t in tokens if "=" not in t).replace("x", ",").split(",") \
        if len(keywords) < len(tokens) else []
    try:
        if any(not a.strip() for a in args):  # 'multi_node:2x' is not 'multi_node:2x4'
            raise ValueError(argstr)
        ints = [int(a) for a in args]
        sig = inspect.signature(fn)
        for k, v in keywords.items():  # only the builder's string options (style=...)
            if k not in sig.parameters or not isinstance(sig.parameters[k].default, str):
                raise ValueError(k)
        sig.bind(*ints, **keywords)
    except (ValueError, TypeError):
        raise TopologyError(f"bad arguments {argstr!r} for topology builder {name!r}; "
                            f"signature: {name}{inspect.signature(fn)}") from None
    return fn(*ints, **keywords)


def resolve(spec: str | os.PathLike | Topology) -> Topology:
    """A Topology from an object, a YAML path, or a builder spec."""
    if isinstance(spec, Topology):
        return spec
    s = str(spec)
    if s.endswith((".yaml", ".yml", ".json")) or os.path.sep in s or Path(s).is_file():
        return load(s)
    return build(s)
