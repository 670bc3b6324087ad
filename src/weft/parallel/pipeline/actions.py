"""Pipeline actions and their text form: one action a string, a schedule a CSV.

An action is ``F`` (forward of micro-batch ``mb`` through model chunk ``chunk``), ``B``
(its backward), ``U`` (PipeDream's weight update after that backward), or a transfer:
``SEND_F``/``RECV_F`` (the activation leaving/entering a chunk) and ``SEND_B``/``RECV_B``
(the gradient going back), which name their ``peer`` rank.

The text form follows torch.distributed.pipelining's ``_Action`` (``[stage][kind][mb]``,
e.g. ``2F0``, ``3SEND_F1``), with the chunk as the stage, and adds the peer rank of a
transfer after an ``@``::

    0F3          forward of micro-batch 3 through chunk 0
    1B2          backward of micro-batch 2 through chunk 1
    0U2          weight update of chunk 0 after micro-batch 2's backward
    0SEND_F3@1   send chunk 0's output for micro-batch 3 to rank 1
    1RECV_F3@0   receive chunk 1's input for micro-batch 3 from rank 0
    1SEND_B3@0   send the gradient of chunk 1's input for micro-batch 3 to rank 0
    0RECV_B3@1   receive the gradient of chunk 0's output for micro-batch 3 from rank 1

A schedule ({rank: [actions]}) is a CSV with one row per rank, row r for rank r, one
action per cell (`to_csv` / `from_csv`, `dump_csv` / `load_csv`); a compute-only schedule
(F, B, U) uses the same form and `weft.parallel.pipeline.schedule.lower` adds the
transfers.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import NamedTuple

from weft.errors import PlanError

COMPUTE = ("F", "B")
TRANSFERS = ("SEND_F", "RECV_F", "SEND_B", "RECV_B")
KINDS = (*COMPUTE, "U", *TRANSFERS)
_TEXT = re.compile(r"(\d+)(SEND_F|RECV_F|SEND_B|RECV_B|F|B|U)(\d+)(?:@(\d+))?")


class Action(NamedTuple):
    kind: str  # F, B, U, SEND_F, RECV_F, SEND_B, RECV_B
    mb: int
    chunk: int
    peer: int = -1  # the other rank of a transfer

    def __str__(self) -> str:
        return f"{self.chunk}{self.kind}{self.mb}" + (f"@{self.peer}" if self.peer >= 0 else "")

    __repr__ = __str__

    @classmethod
    def parse(cls, text: str, where: str = "action") -> "Action":
        """The action written as `text` (see the module doc); PlanError naming `where`."""
        m = _TEXT.fullmatch(text.strip())
        if not m:
            raise PlanError(f"{where}: cannot parse {text!r}; write [chunk][kind][micro-batch] "
                            f"with kind one of {', '.join(KINDS)} and @peer after a transfer, "
                            "e.g. 0F3, 1B2, 0SEND_F3@1")
        chunk, kind, mb, peer = m.groups()
        if (kind in TRANSFERS) != (peer is not None):
            need = "needs its peer rank (e.g. 0SEND_F3@1)" if kind in TRANSFERS else \
                "takes no peer rank"
            raise PlanError(f"{where}: {text!r}: {kind} {need}")
        return cls(kind, int(mb), int(chunk), int(peer) if peer is not None else -1)


def to_csv(schedule: dict[int, list[Action]]) -> str:
    """`schedule` as CSV text: row r holds rank r's actions (ranks must be 0..W-1)."""
    if sorted(schedule) != list(range(len(schedule))):
        raise PlanError(f"a schedule's CSV has one row per rank 0..W-1; got ranks "
                        f"{sorted(schedule)}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for rank in range(len(schedule)):
        writer.writerow([str(a) for a in schedule[rank]])
    return out.getvalue()


def from_csv(text: str, source: str = "<csv>") -> dict[int, list[Action]]:
    """The schedule written by `to_csv`; PlanError naming `source`, the row (rank) and the
    column of a cell that does not parse."""
    rows = list(csv.reader(io.StringIO(text)))
    return {rank: [Action.parse(cell, f"{source}: rank {rank} (row {rank + 1}), column "
                                      f"{col + 1}")
                   for col, cell in enumerate(row)]
            for rank, row in enumerate(rows)}


def dump_csv(schedule: dict[int, list[Action]], path: str | os.PathLike) -> Path:
    """Write `schedule` to `path` as CSV (atomically)."""
    from weft.atomic import write_text

    return write_text(path, to_csv(schedule))


def load_csv(path: str | os.PathLike) -> dict[int, list[Action]]:
    """Read a schedule written by `dump_csv`."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PlanError(f"cannot read schedule {path}: {exc.strerror or exc}") from None
    return from_csv(text, str(path))
