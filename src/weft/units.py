"""Human-readable quantities: sizes and rates ('256MB', '16GiB', '25GB/s', '100Mbit'), times
('1us', '5ms', '2s') and compute rates ('15.7TFLOPS', '900GFLOP/s'); each parsed and written
back (`fmt_*_exact` gives a string that parses to the very same float, for files)."""

from __future__ import annotations

import re
from decimal import Decimal

# unit -> (power of ten, power-of-two factor): '5us' is float('5e-6') exactly, not 5 * 1e-6
_SIZE = {
    "": (0, 1), "b": (0, 1),
    "k": (3, 1), "kb": (3, 1), "m": (6, 1), "mb": (6, 1), "g": (9, 1), "gb": (9, 1),
    "t": (12, 1), "tb": (12, 1),
    "kib": (0, 2**10), "mib": (0, 2**20), "gib": (0, 2**30), "tib": (0, 2**40),
    "kbit": (3, 1 / 8), "mbit": (6, 1 / 8), "gbit": (9, 1 / 8), "bit": (0, 1 / 8),
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
    return _scaled(m.group(1), _SIZE[m.group(2).lower()])


def _scaled(number: str, unit: tuple[int, float]) -> float:
    """`number` times 10**unit[0] times unit[1] (a power of two), rounded once."""
    return float(Decimal(number).scaleb(unit[0])) * unit[1]


_TIME = {"": (0, 1), "s": (0, 1), "ms": (-3, 1), "us": (-6, 1), "µs": (-6, 1), "ns": (-9, 1)}
_FLOPS = {"": (0, 1), "flops": (0, 1), "kflops": (3, 1), "mflops": (6, 1), "gflops": (9, 1),
          "tflops": (12, 1), "pflops": (15, 1)}
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
    return _scaled(m.group(1), table[m.group(2).lower()])


def parse_seconds(value: str | int | float, what: str = "time") -> float:
    """A duration in seconds: a number, or '1us', '5ms', '2s', '100ns'."""
    return _quantity(value, _TIME, what, "'1us', '5ms', '2s'")


def parse_flops(value: str | int | float, what: str = "flops") -> float:
    """A compute rate in FLOP/s: a number, or '15.7TFLOPS', '900GFLOP/s'."""
    return _quantity(value, _FLOPS, what, "'15.7TFLOPS', '900GFLOPS'")


def _exact(x: float, scales: list[tuple[str, float]], parse) -> str | float:
    """The shortest '<number><unit>' that parses back to exactly `x`, else `x` itself."""
    best = None
    for unit, scale in scales:
        if x and abs(x) >= scale:
            text = f"{x / scale:.12g}{unit}"
            if parse(text) == x and (best is None or len(text) < len(best)):
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
