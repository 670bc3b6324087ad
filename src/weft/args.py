"""Command-line arguments checked where they are parsed, before anything starts.

Every `weft` command is built on `ArgumentParser`, whose errors are one line,
``weft: error: <command>: <option>: <problem>``, with exit status 2 (argparse's default prints
the usage and a second line). The `type=` helpers below reject bad values with a message that
says what was expected::

    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--size", type=size, default="256MB")
    p.add_argument("--out", type=output_file)

Values that begin with '-' and a digit are taken as values, so ``--size -5MB`` says "must be
> 0" instead of argparse's "expected one argument".
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from pathlib import Path

from weft.units import parse_size


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._negative_number_matcher = re.compile(r"^-\.?\d")
        self._has_negative_number_optionals = []  # never read '-5' as an option

    def error(self, message: str):  # noqa: D102 - argparse's hook
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        self.exit(2, f"weft: error: {command}{message}\n")


def _number(text: str, kind, what: str):
    try:
        x = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(x, float) and not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return x


def positive_int(text: str) -> int:
    x = _number(text, int, "a whole number")
    if x < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return x


def nonneg_int(text: str) -> int:
    x = _number(text, int, "a whole number")
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return x


def positive_float(text: str) -> float:
    x = _number(text, float, "a number")
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return x


def nonneg_float(text: str) -> float:
    x = _number(text, float, "a number")
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return x


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    x = _number(text, float, "a number")
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return x


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: the system picks a free one)."""
    x = _number(text, int, "a port number")
    if not 0 <= x <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535, got {text}")
    return x


def size(text: str) -> float:
    """A byte count or rate > 0: '256MB', '16GiB', '25GB/s', '1e6'."""
    if text.strip().startswith("-"):
        try:
            parse_size(text.strip()[1:])
        except ValueError:
            pass
        else:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    try:
        x = parse_size(text, "size")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot parse {text!r}; expected bytes like 256MB, 16GiB or 25GB/s") from None
    if not x > 0 or not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return x


def existing_file(text: str) -> Path:
    p = Path(text)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return p


def output_file(text: str) -> Path:
    """A file path that can be written: not a folder, and its folder exists or can be made.
    Checked by making (and removing) a temporary entry there, so nothing is left behind."""
    p = Path(text)
    if not text or p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, expected a file path")
    check_writable_dir(p.parent, text)
    return p


def output_dir(text: str) -> Path:
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    check_writable_dir(p, text)
    return p


def check_writable_dir(folder: Path, shown: str) -> None:
    """ArgumentTypeError unless files can be created in `folder` (made if missing)."""
    anchor = folder
    while not anchor.exists():  # the nearest folder that exists
        if anchor.parent == anchor:
            break
        anchor = anchor.parent
    if not anchor.is_dir():
        raise argparse.ArgumentTypeError(f"{shown}: {anchor} is not a folder")
    try:
        if anchor == folder:
            fd, tmp = tempfile.mkstemp(dir=anchor, prefix=".weft-write-check-")
            os.close(fd)
            os.unlink(tmp)
        else:
            os.rmdir(tempfile.mkdtemp(dir=anchor, prefix=".weft-write-check-"))
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"{shown}: cannot write in {anchor} ({exc.strerror or exc})") from None

