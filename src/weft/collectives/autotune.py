"""Choose algorithm and chunk size per (topology, collective, message size).

Candidates are ring, double binary tree, flat (one star tree: the root talks
to every rank directly, the best tree when all ranks share one host's memory
and there is no link to share), and spanning-tree packing keeping at
most 1, 2, 4, 8 or 16 trees (fewer trees: fewer messages per step, a lower
rate); chunk sizes 16 KiB .. 16 MiB. The cost model ranks them; `measure` can
refine the choice by timing a `shortlist` on the live process group: the model's
best entry of each of its best few algorithm families (ring, dbtree, flat, packing):
the model errs per algorithm, not per piece size (on 4 local gloo ranks, 2026-12-02,
the flat tree's one-piece runs were predicted 20-31% under, the ring's up to 22% over),
so its best few entries, one algorithm at neighbouring piece sizes, could all be the
flat tree.
Schedules and choices are cached in memory per fabric fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from weft.collectives.costmodel import CostParams, family, lower_bound, predict
from weft.collectives.fabric import Fabric
from weft.collectives.packing import pack
from weft.collectives.ring import ring_for
from weft.collectives.schedule import Schedule, from_trees
from weft.collectives.tree import dbtree

TREE_COUNTS = (1, 2, 4, 8, 16)
CHUNKS = tuple(1 << k for k in (14, 15, 16, 17, 18, 20, 22, 24))
_MODE = {"broadcast": "down", "reduce": "up", "allreduce": "both", "reduce_scatter": "both",
         "all_gather": "both"}
_FABRICS: dict[str, Fabric] = {}


@dataclass(frozen=True)
class Choice:
    algorithm: str  # "ring", "dbtree", "packing" or "packing:K"
    chunk_bytes: int
    schedule: Schedule
    predicted: float  # seconds
    bound: float  # seconds (max-flow lower bound)

    @property
    def efficiency(self) -> float:
        return self.bound / self.predicted if self.predicted > 0 else 1.0


def _rooted(collective: str, root: int) -> int | None:
    return root if collective in ("broadcast", "reduce") else None


@lru_cache(maxsize=512)
def _schedule(key: str, collective: str, algorithm: str, root: int) -> Schedule:
    fabric = _FABRICS[key]
    name, _, k = algorithm.partition(":")
    if name == "ring":
        return ring_for(fabric, collective, root)
    if name == "dbtree":
        return dbtree(collective, fabric.n, root)
    if name == "flat":
        star = {r: root for r in range(fabric.n) if r != root}
        return from_trees(collective, fabric.n, [(star, 1.0)], "flat", root=_rooted(collective, root))
    if name == "packing":
        mode = _MODE[collective]
        p = pack(fabric, root=root if mode != "both" else 0, mode=mode,
                 max_trees=int(k) if k else 16)
        s = from_trees(collective, fabric.n, p.trees, algorithm, root=_rooted(collective, root))
        return s
    raise ValueError(f"unknown algorithm {algorithm!r}; one of {ALGORITHM_NAMES}")


ALGORITHM_NAMES = "ring, dbtree, flat, packing, packing:K (K >= 1 trees)"


def check_algorithm(algorithm: str) -> str:
    """`algorithm` if it names one (ValueError saying which ones exist otherwise)."""
    name, colon, k = algorithm.partition(":")
    if name in ("ring", "dbtree", "flat") and not colon:
        return algorithm
    if name == "packing" and (not colon or (k.isdigit() and int(k) >= 1)):
        return algorithm
    raise ValueError(f"unknown algorithm {algorithm!r}; one of {ALGORITHM_NAMES}")


def schedule_for(fabric: Fabric, collective: str, algorithm: str, root: int = 0) -> Schedule:
    """The (cached) schedule of `algorithm` for `collective` on `fabric`."""
    check_algorithm(algorithm)
    _FABRICS.setdefault(fabric.key, fabric)
    return _schedule(fabric.key, collective, algorithm, root if _rooted(collective, root) is not None
                     else 0)


def candidates(fabric: Fabric, collective: str) -> list[str]:
    out = ["ring", "dbtree", "flat"]
    out += [f"packing:{k}" for k in TREE_COUNTS]
    return out


def ranked(fabric: Fabric, collective: str, nbytes: int, root: int = 0,
           params: CostParams = CostParams(), algorithms=None, chunks=None) -> list[Choice]:
    """Every (algorithm, chunk) candidate, best predicted first."""
    bound = lower_bound(collective, fabric, nbytes, root)
    algs = algorithms or candidates(fabric, collective)
    out, seen = [], set()
    for alg in algs:
        s = schedule_for(fabric, collective, alg, root)
        sig = (tuple(s.steps and map(tuple, s.steps)), tuple(s.segments))
        if sig in seen:  # e.g. packing:8 and packing:16 keeping the same trees
            continue
        seen.add(sig)
        for ch in chunks or CHUNKS:
            out.append(Choice(alg, ch, s, predict(s, fabric, nbytes, ch, params), bound))
    return sorted(out, key=lambda c: c.predicted)


def shortlist(ranked_choices: list[Choice], top: int = 3) -> list[Choice]:
    """The first (best predicted) entry of each of the first `top` algorithm families
    in `ranked_choices` (best first, as `ranked` returns them)."""
    if top < 1:
        raise ValueError(f"a shortlist needs at least one entry, got top={top}")
    out, seen = [], set()
    for c in ranked_choices:
        if family(c.algorithm) not in seen:
            seen.add(family(c.algorithm))
            out.append(c)
            if len(out) == top:
                break
    return out


_CHOICES: dict = {}


def choose(fabric: Fabric, collective: str, nbytes: int, root: int = 0,
           params: CostParams = CostParams(), algorithms=None, measure=None,
           top: int = 3) -> Choice:
    """The best (algorithm, chunk) by the cost model, cached per size bucket.

    `measure(choice) -> seconds`, when given, times the `shortlist` of the model's
    best `top` algorithm families on the live group (it must return the same value on every
    rank, e.g. the max over ranks) and the fastest wins.
    """
    bucket = max(1, int(nbytes)).bit_length()  # sizes within a factor of 2 share a choice
    key = (fabric.key, collective, bucket, root, params, tuple(algorithms or ()), measure is None)
    if key not in _CHOICES:
        r = ranked(fabric, collective, nbytes, root, params, algorithms)
        if measure is not None and len(r) > 1:
            best = min(shortlist(r, top), key=measure)
        else:
            best = r[0]
        _CHOICES[key] = best
    return _CHOICES[key]
