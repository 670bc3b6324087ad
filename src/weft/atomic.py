"""Atomic file writes: a temp file in the same folder, renamed into place on success.

A crash or an error mid-write leaves the previous file (or none) and no temp file, so
nothing half-written is ever seen under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator


_UMASK_LOCK = threading.Lock()


def _file_mode(path: Path) -> int:
    """The mode a plain `open(path, "w")` would give: the existing file's, else 0666 & ~umask
    (mkstemp's own 0600 would make every file weft writes private)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        with _UMASK_LOCK:  # os.umask can only be read by setting it
            mask = os.umask(0o22)
            os.umask(mask)
        return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path (same folder, same suffix) to write; rename it over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2, **kw: Any) -> Path:
    return write_text(path, json.dumps(data, indent=indent, **kw) + "\n")


def save_figure(fig, path: str | os.PathLike, **savefig_kw: Any) -> Path:
    """Save a matplotlib figure atomically, then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **savefig_kw)
    finally:
        plt.close(fig)
    return Path(path)


def replace_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Put the finished folder `tmp` in place of `path` (replacing any previous one): the
    old folder is renamed aside, the new one renamed in, then the old one removed, so
    `path` is always either the old folder or the new one, never a mix."""
    tmp, path = Path(tmp), Path(path)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path

