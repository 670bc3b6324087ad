"""Emulated clusters for tests and benchmarks: a `Topology` turned into real network
namespaces (one per device, a shaped veth per link), and a few small shapes to emulate.
Nothing in the collective algorithms depends on this package."""
