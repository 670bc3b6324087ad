"""Human-readable quantities: sizes and rates ('256MB', '16GiB', '25GB/s', '100Mbit'), times
('1us', '5ms', '2s') and compute rates ('15.7TFLOPS', '900GFLOP/s'); each parsed and written
back (`fmt_*_exact` gives a string that parses to the very same float, for files)."""

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


_TIME = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_FLOPS = {"": 1.0, "flops": 1.0, "kflops": 1e3, "mflops": 1e6, "gflops": 1e9, "tflops": 1e12,
          "pflops": 1e15}
_QTY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµ]*)\s*$")


def _quantity(value, table: dict, what: str, examples: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a number or a string like {examples}, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).replace("FLOP/s", "FLOPS").replace("flop/s", "flops")
    m = _QTY.match(text)
    if not m or m.group(2).lower() not in table:
        raise ValueError(f"{what}: cannot parse {value!r}; use a number or e.g. {examples}")
    return float(m.group(1)) * table[m.group(2).lower()]


def parse_seconds(value: str | int | float, what: str = "time") -> float:
    """A duration in seconds: a number, or '1us', '5ms', '2s', '100ns'."""
    return _quantity(value, _TIME, what, "'1us', '5ms', '2s'")


def parse_flops(value: str | int | float, what: str = "flops") -> float:
    """A compute rate in FLOP/s: a number, or '15.7TFLOPS', '900GFLOP/s'."""
    return _quantity(value, _FLOPS, what, "'15.7TFLOPS', '900GFLOPS'")


def _exact(x: float, scales: list[tuple[str, float]], parse) -> str | float:
    """The shortest '<number><unit>' that parses back to `x` (within 1e-12), else `x` itself."""
    best = None
    for unit, scale in scales:
        if x and abs(x) >= scale:
            text = f"{x / scale:.12g}{unit}"
            if abs(parse(text) - x) <= 1e-12 * abs(x) and (best is None or len(text) < len(best)):
                best = text
    return best if best is not None else x


def fmt_bytes_exact(x: float, rate: bool = False) -> str | float:
    """'16GiB', '25GB/s', ... for files (whichever unit reads shortest); parses back to `x`."""
    units = [("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("TB", 1e12),
             ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1)]
    return _exact(x, [(u + ("/s" if rate else ""), s) for u, s in units], parse_size)


def fmt_seconds_exact(x: float) -> str | float:
    return _exact(x, [("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)], parse_seconds)


def fmt_flops_exact(x: float) -> str | float:
    return _exact(x, [("PFLOPS", 1e15), ("TFLOPS", 1e12), ("GFLOPS", 1e9), ("MFLOPS", 1e6),
                      ("FLOPS", 1.0)], parse_flops)


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
