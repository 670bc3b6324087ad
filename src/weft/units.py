"""Human-readable sizes and rates: '256MB', '16GiB', '25GB/s', '100Mbit'."""

from __future__ import annotations

import re

_SIZE = {
    "": 1, "b": 1,
    "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "bit": 1 / 8,
}
_NUM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*(/s)?\s*$")


def parse_size(value: str | int | float, what: str = "size") -> float:
    """Parse a byte count or a byte rate ('/s' is accepted and ignored).

    Decimal prefixes (KB, MB, GB) are powers of 10; binary ones (KiB, MiB, GiB)
    powers of 2; 'bit' units are divided by 8.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a number or a string like '256MB', got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    m = _NUM.match(str(value))
    if not m or m.group(2).lower() not in _SIZE:
        raise ValueError(f"{what}: cannot parse {value!r}; use a number of bytes or e.g. '256MB', '16GiB', '25GB/s'")
    return float(m.group(1)) * _SIZE[m.group(2).lower()]


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_rate(bps: float) -> str:
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("KB/s", 1e3)):
        if abs(bps) >= scale:
            return f"{bps / scale:.1f} {unit}"
    return f"{bps:.0f} B/s"


def fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"
