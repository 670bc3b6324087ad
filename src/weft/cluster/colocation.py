"""Space sharing by memory profiles: two jobs share an accelerator when they fit its memory.

Gavel's packed policies co-locate pairs of jobs whose pair throughput was measured; whether
the pair fits the accelerator's memory is only implicit in which pairs could be measured.
`CoLocation` makes memory explicit. Each job type has a memory profile (bytes over one
training step, `weft profile memory`); on accelerator type t a job's step lasts
``1 / throughput[job, t]`` seconds, so the two profiles are laid on a common period (the
longer step; the shorter job waits at its trough, kept in phase by a per-step signal as
`weft.parallel.wavelet` does) and the pair fits when

* rule ``"offset"`` (Wavelet): the combined peak with the best launch offset
  (`weft.planner.offsets.plan_offsets`, exact over ``bins`` bins) is within the memory, or
* rule ``"gang"``: the combined peak with both launched together is.

`table(throughputs)` returns a throughput table whose pairs are exactly the pairs that fit,
on each type: measured pair throughputs where Gavel has them, and for a pair that fits but
was never measured either nothing (``unmeasured="skip"``) or each job at the median share of
its isolated throughput that co-located jobs get in the measured pairs of that type
(``unmeasured="median"``, a model, reported as such). Give that table to a packed policy
(`max_min_fairness_packed`, `min_makespan_packed`) in `simulate`; nothing else changes.

Profiles file (JSON; paths relative to it)::

    {"format": "weft.colocation/1",
     "memory": {"v100": "16GiB", "p100": "16GiB", "k80": "12GiB"},
     "profiles": {"ResNet-50 (batch size 64)": "resnet50_b64.json",
                  "A3C": {"bins": [1.2e8, 3.4e8, ...]}}}

A job type's profile is a `weft profile memory` file or ``{"bins": [...]}`` (bytes over one
step in equal time bins); it stands for one accelerator of a job of any scale factor (data
parallelism keeps the per-accelerator batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weft.cluster.model import ClusterError
from weft.cluster.throughputs import Key, ThroughputTable
from weft.errors import PlanError
from weft.files import read_json
from weft.planner.memprofile import MemoryProfile
from weft.planner.offsets import plan_offsets
from weft.units import parse_size

FORMAT = "weft.colocation/1"
RULES = ("offset", "gang")
UNMEASURED = ("skip", "median")


def _stretch(profile: np.ndarray, period: float, common: float, bins: int) -> np.ndarray:
    """`profile` (equal bins over one step of `period` s) on `bins` bins of `common` >= period
    seconds, holding its last value after the step; each bin the maximum of the profile's bins
    it overlaps (boundaries that meet within 1e-9 of a bin do not overlap: float noise)."""
    p = np.asarray(profile, float)
    n = len(p)
    scale = common * n / (bins * period)  # one common bin, in profile bins
    out = np.empty(bins)
    for k in range(bins):
        x0, x1 = k * scale, (k + 1) * scale
        if x0 >= n - 1e-9:
            out[k] = p[-1]
            continue
        i0 = int(math.floor(x0 + 1e-9))
        i1 = min(n, max(i0 + 1, math.ceil(x1 - 1e-9)))
        out[k] = p[i0:i1].max()
    return out


@dataclass
class CoLocation:
    """Memory profiles per job type, memory per accelerator type, and the admission rule."""

    profiles: dict[str, np.ndarray]
    memory: dict[str, float]
    rule: str = "offset"
    bins: int = 64
    unmeasured: str = "skip"
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ClusterError(f"co-location rule {self.rule!r}: choose one of {', '.join(RULES)}")
        if self.unmeasured not in UNMEASURED:
            raise ClusterError(f"unmeasured {self.unmeasured!r}: choose one of "
                               f"{', '.join(UNMEASURED)}")
        for t, m in self.memory.items():
            if not (m > 0 and math.isfinite(m)):
                raise ClusterError(f"memory of accelerator type {t!r} must be > 0 bytes, got {m!r}")
        for name, p in self.profiles.items():
            a = np.asarray(p, float)
            if a.ndim != 1 or len(a) == 0 or not np.all(np.isfinite(a)) or (a < 0).any():
                raise ClusterError(f"memory profile of {name!r}: expected a non-empty list of "
                                   "bytes >= 0")
            self.profiles[name] = a

    @classmethod
    def load(cls, path: str | Path, **kw) -> CoLocation:
        """Read a profiles file (see the module doc); ClusterError naming the file and field."""
        path = Path(path)
        raw = read_json(path, ClusterError, "co-location profiles")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ClusterError(f"{path}: field 'format' must be {FORMAT!r}")
        for name in ("memory", "profiles"):
            if not isinstance(raw.get(name), dict) or not raw[name]:
                raise ClusterError(f"{path}: field {name!r} must be a non-empty mapping")
        memory = {}
        for t, v in raw["memory"].items():
            try:
                memory[t] = parse_size(v, f"memory.{t}")
            except ValueError as exc:
                raise ClusterError(f"{path}: field 'memory.{t}': {exc}") from None
        profiles = {}
        for name, v in raw["profiles"].items():
            where = f"{path}: field 'profiles.{name}"
            if isinstance(v, str):
                try:
                    prof = MemoryProfile.load(path.parent / v)
                except PlanError as exc:
                    raise ClusterError(f"{where}': {exc}") from None
                profiles[name] = prof.bins(kw.get("bins", 64))
            elif isinstance(v, dict) and isinstance(v.get("bins"), list) and v["bins"]:
                try:
                    profiles[name] = np.array([float(x) for x in v["bins"]])
                except (TypeError, ValueError):
                    raise ClusterError(f"{where}.bins': must be numbers") from None
            else:
                raise ClusterError(f"{where}': expected a memory profile file name or "
                                   "{\"bins\": [bytes, ...]}")
        try:
            return cls(profiles, memory, **kw)
        except ClusterError as exc:
            raise ClusterError(f"{path}: {exc}") from None

    def pair_peaks(self, ka: Key, kb: Key, table: ThroughputTable, accel: str
                   ) -> tuple[float, float] | None:
        """(combined peak with the best offset, gang-launched peak) of ka and kb sharing one
        `accel`, or None when a profile or a throughput is missing."""
        plan = self._plan(ka, kb, table, accel)
        return None if plan is None else (plan.peak, plan.gang_peak)

    def launch_offset(self, ka: Key, kb: Key, table: ThroughputTable, accel: str) -> float | None:
        """Where kb's step starts in the pair's common period, as a fraction of that period
        (ka's at 0), under this rule: the best offset's for ``"offset"``, 0 for ``"gang"``;
        None when a profile or a throughput is missing. The executor keeps a leased pair at
        this offset (tick-tock)."""
        plan = self._plan(ka, kb, table, accel)
        if plan is None:
            return None
        return plan.fractions[1] if self.rule == "offset" else 0.0

    def _plan(self, ka, kb, table, accel):
        key = (ka[0], kb[0], accel)
        if key not in self._cache:
            self._cache[key] = self._offsets(ka, kb, table, accel)
        return self._cache[key]

    def _offsets(self, ka, kb, table, accel):
        pa, pb = self.profiles.get(ka[0]), self.profiles.get(kb[0])
        if pa is None or pb is None or accel not in table.types:
            return None
        j = table.types.index(accel)
        ta, tb = table.iso[ka][j], table.iso[kb][j]
        if ta <= 0 or tb <= 0:
            return None
        sa, sb = 1.0 / ta, 1.0 / tb
        common = max(sa, sb)
        return plan_offsets([_stretch(pa, sa, common, self.bins), _stretch(pb, sb, common, self.bins)])

    def fits(self, ka: Key, kb: Key, table: ThroughputTable, accel: str) -> bool:
        if accel not in self.memory:
            return False
        peaks = self.pair_peaks(ka, kb, table, accel)
        if peaks is None:
            return False
        return (peaks[0] if self.rule == "offset" else peaks[1]) <= self.memory[accel]

    def _median_share(self, table: ThroughputTable) -> np.ndarray:
        share = np.zeros(len(table.types))
        for j in range(len(table.types)):
            vals = [v[j, side] / table.iso[k][j] for (ka, kb), v in table.pair.items()
                    for side, k in ((0, ka), (1, kb)) if v[j, side] > 0 and table.iso[k][j] > 0]
            share[j] = float(np.median(vals)) if vals else 0.0
        return share

    def table(self, table: ThroughputTable) -> ThroughputTable:
        """`table` with exactly the pairs that fit (see the module doc)."""
        share = self._median_share(table) if self.unmeasured == "median" else None
        keys = [k for k in table.keys if k[0] in self.profiles]
        pairs: dict[tuple[Key, Key], np.ndarray] = {}
        for i, ka in enumerate(keys):
            for kb in keys[i:]:
                if ka[1] != kb[1]:
                    continue  # like Gavel: pairs share the same number of accelerators
                tp = np.zeros((len(table.types), 2))
                measured = table.pair_row(ka, kb)
                back = table.pair_row(kb, ka)
                for j, t in enumerate(table.types):
                    if not self.fits(ka, kb, table, t):
                        continue
                    if measured is not None and measured[j].min() > 0:
                        tp[j] = measured[j]
                    elif back is not None and back[j].min() > 0:
                        tp[j] = back[j][::-1]
                    elif share is not None:
                        tp[j] = (table.iso[ka][j] * share[j], table.iso[kb][j] * share[j])
                if tp.max() > 0:
                    pairs[(ka, kb)] = tp
                    pairs[(kb, ka)] = tp[:, ::-1].copy()
        return ThroughputTable(table.types, table.iso, pairs)

    def summary(self, table: ThroughputTable) -> dict:
        """How many job-type pairs (scale factor 1, unordered) fit each accelerator type under
        each rule, and how many of them Gavel measured."""
        keys = [k for k in table.keys if k[0] in self.profiles and k[1] == 1]
        out = {}
        for t in table.types:
            if t not in self.memory:
                continue
            n = {"pairs": 0, "fit_gang": 0, "fit_offset": 0, "measured": 0}
            for i, ka in enumerate(keys):
                for kb in keys[i:]:
                    peaks = self.pair_peaks(ka, kb, table, t)
                    if peaks is None:
                        continue
                    n["pairs"] += 1
                    n["fit_offset"] += peaks[0] <= self.memory[t]
                    n["fit_gang"] += peaks[1] <= self.memory[t]
                    m = table.pair_row(ka, kb)
                    n["measured"] += bool(m is not None and m[table.types.index(t)].min() > 0)
            out[t] = n
        return out
