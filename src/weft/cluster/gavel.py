"""Where Gavel's data lives (throughput tables and traces).

Found in this order: an explicit directory (``--gavel-dir``), the environment
variable ``WEFT_GAVEL_DIR``, then the first ``shared/data/gavel`` seen walking up
from the current directory and then from weft's own source tree. A checkout of
weft keeps the data beside the repository (``../shared/data/gavel``), which the
walk finds from anywhere inside the checkout; an installed wheel needs one of
the first two.
"""

from __future__ import annotations

import os
from pathlib import Path

from weft.cluster.model import ClusterError

ENV = "WEFT_GAVEL_DIR"
RELATIVE = Path("shared") / "data" / "gavel"


def gavel_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The Gavel data directory, or a ClusterError naming both ways to set it."""
    for value, name in ((explicit, "--gavel-dir"), (os.environ.get(ENV), ENV)):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ClusterError(f"{name} {value}: not a directory")
            return path
    starts = [Path.cwd(), Path(__file__).resolve().parent]
    for start in starts:
        for d in (start, *start.parents):
            if (d / RELATIVE).is_dir():
                return d / RELATIVE
    raise ClusterError(f"Gavel data not found: no {RELATIVE} above {starts[0]} or {starts[1]}; "
                       f"pass --gavel-dir DIR or set {ENV}=DIR")
