"""Devices, links and the bandwidth graph; builders; YAML load/save."""

from weft.topology.builders import BUILDERS, dgx1, fat_tree, full_mesh, multi_node, nvswitch, ring
from weft.topology.io import build, dumps, from_dict, load, resolve, save
from weft.topology.model import Device, Link, Topology

__all__ = ["Device", "Link", "Topology", "BUILDERS", "ring", "full_mesh", "dgx1", "nvswitch",
           "multi_node", "fat_tree", "load", "save", "dumps", "from_dict", "build", "resolve"]
