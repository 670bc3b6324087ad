"""Throughput tables: steps/s of each (job type, scale factor) on each accelerator type.

Reads Gavel's ``simulation_throughputs.json`` layout (keys spelling
``"('<model>', <scale>)"``) and the older ``oracle_throughputs.json`` layout
(bare model names, scale factor 1), plus pair (space-sharing) throughputs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from weft.cluster.model import ClusterError
from weft.files import read_json

Key = tuple[str, int]


def _parse_key(raw: str, path: Path) -> Key:
    if raw.startswith("("):
        try:
            name, scale = ast.literal_eval(raw)
            return (str(name), int(scale))
        except (ValueError, SyntaxError, TypeError):
            raise ClusterError(f"{path}: cannot parse job key {raw!r}; expected \"('<model>', <scale>)\"") from None
    return (raw, 1)


class ThroughputTable:
    """``iso[key]`` is an array over ``types``; ``pair[(ka, kb)]`` a (types, 2) array."""

    def __init__(self, types: list[str], iso: dict[Key, np.ndarray],
                 pair: dict[tuple[Key, Key], np.ndarray] | None = None):
        self.types = list(types)
        self.iso = iso
        self.pair = pair or {}
        self.keys = sorted(iso)
        self._partners: dict[Key, list[Key]] = {}
        for (ka, kb) in self.pair:
            self._partners.setdefault(ka, []).append(kb)

    def has(self, key: Key) -> bool:
        return key in self.iso

    def row(self, key: Key, types: list[str] | None = None) -> np.ndarray:
        """Isolated throughputs of ``key`` on ``types`` (0 where it cannot run)."""
        v = self.iso[key]
        if types is None or types == self.types:
            return v
        idx = {t: i for i, t in enumerate(self.types)}
        return np.array([v[idx[t]] if t in idx else 0.0 for t in types])

    def pair_row(self, ka: Key, kb: Key, types: list[str] | None = None) -> np.ndarray | None:
        """(len(types), 2) throughputs of ka and kb sharing accelerators, or None."""
        v = self.pair.get((ka, kb))
        if v is None:
            return None
        if types is None or types == self.types:
            return v
        idx = {t: i for i, t in enumerate(self.types)}
        return np.array([v[idx[t]] if t in idx else (0.0, 0.0) for t in types])

    def partners(self, key: Key) -> list[Key]:
        return self._partners.get(key, [])

    def job_types(self, scale: int | None = None) -> list[str]:
        return sorted({k[0] for k in self.keys if scale is None or k[1] == scale})

    @classmethod
    def load(cls, path: str | Path, types: list[str] | None = None) -> ThroughputTable:
        """Read a Gavel throughput JSON. ``types`` defaults to the consolidated ones."""
        path = Path(path)
        raw = read_json(path, ClusterError, "throughput")
        if not isinstance(raw, dict) or not raw:
            raise ClusterError(f"{path}: expected an object keyed by accelerator type")
        if types is None:
            types = [t for t in raw if not t.endswith("_unconsolidated")]
        missing = [t for t in types if t not in raw]
        if missing:
            raise ClusterError(f"{path}: accelerator type(s) {missing} not in file (has {list(raw)})")
        keys = sorted({_parse_key(k, path) for t in types for k in raw[t]})
        iso = {k: np.zeros(len(types)) for k in keys}
        pair: dict[tuple[Key, Key], np.ndarray] = {}
        for j, t in enumerate(types):
            for kraw, entry in raw[t].items():
                k = _parse_key(kraw, path)
                if not isinstance(entry, dict) or "null" not in entry:
                    raise ClusterError(f"{path}: {t}/{kraw}: missing isolated throughput 'null'")
                iso[k][j] = float(entry["null"])
                for oraw, val in entry.items():
                    if oraw == "null":
                        continue
                    if not (isinstance(val, list) and len(val) == 2):
                        raise ClusterError(f"{path}: {t}/{kraw}/{oraw}: expected [a, b], got {val!r}")
                    if val[0] <= 0 or val[1] <= 0:
                        continue
                    o = _parse_key(oraw, path)
                    pair.setdefault((k, o), np.zeros((len(types), 2)))[j] = val
        return cls(types, iso, pair)

    @classmethod
    def from_mapping(cls, data: dict, types: list[str], where: str = "spec") -> ThroughputTable:
        """Build from ``{job_type: {accel_type: steps_per_s}}`` (scale factor 1)
        or ``{job_type: {scale: {accel_type: steps_per_s}}}``."""
        iso: dict[Key, np.ndarray] = {}
        for name, per in data.items():
            if not isinstance(per, dict):
                raise ClusterError(f"{where}: throughputs of {name!r} must be a mapping")
            nested = all(isinstance(v, dict) for v in per.values())
            items = per.items() if nested else [(1, per)]
            for scale, row in items:
                bad = [t for t in row if t not in types]
                if bad:
                    raise ClusterError(f"{where}: throughputs of {name!r} name unknown accelerator type(s) {bad}")
                try:
                    iso[(str(name), int(scale))] = np.array([float(row.get(t, 0.0)) for t in types])
                except (TypeError, ValueError):
                    raise ClusterError(f"{where}: throughputs of {name!r} must be numbers, got {row!r}") from None
        return cls(types, iso)
