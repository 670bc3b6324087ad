"""Gavel job traces: read (10-column current format, 7-column msr format) and write.

Errors read ``file:line: column N (name): problem``.

A trace is read completely and validated before any job is returned, so a
bad line means no job from that file is scheduled. Errors name file and line.
"""

from __future__ import annotations

import math
from pathlib import Path

from weft.atomic import write_text
from weft.cluster.model import ClusterError, Job
from weft.cluster.throughputs import ThroughputTable

FIELDS10 = ["job_type", "command", "working_directory", "num_steps_arg", "needs_data_dir",
            "total_steps", "scale_factor", "priority_weight", "SLO", "arrival_time"]
FIELDS7 = ["job_type", "command", "num_steps_arg", "needs_data_dir", "total_steps",
           "arrival_time", "scale_factor"]


def _col(where: str, names: list[str], name: str) -> str:
    return f"{where}: column {names.index(name) + 1} ({name})"


def _num(where: str, names: list[str], name: str, text: str, integer: bool = False) -> float:
    at = _col(where, names, name)
    if text.strip() == "":
        raise ClusterError(f"{at}: empty")
    try:
        value = float(text)
    except ValueError:
        raise ClusterError(f"{at}: must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ClusterError(f"{at}: must be finite, got {text!r}")
    if integer and value != int(value):
        raise ClusterError(f"{at}: must be an integer, got {text!r}")
    return value


def parse_line(line: str, where: str, job_id: int, table: ThroughputTable | None,
               skip_unknown: bool = False) -> Job | tuple[str, int]:
    """One trace row as a Job; with ``skip_unknown``, a row whose (type, scale
    factor) the table lacks (or whose scale factor is 0) comes back as that key."""
    cols = line.rstrip("\r\n").split("\t")
    if len(cols) == 10:
        names = FIELDS10
    elif len(cols) == 7:
        names = FIELDS7
    else:
        raise ClusterError(f"{where}: expected 10 tab-separated columns ({', '.join(FIELDS10)}) "
                            f"or the 7 of the msr format ({', '.join(FIELDS7)}), got {len(cols)}")
    f = dict(zip(names, cols))
    if not f["job_type"].strip():
        raise ClusterError(f"{_col(where, names, 'job_type')}: empty")
    steps = _num(where, names, "total_steps", f["total_steps"])
    scale = int(_num(where, names, "scale_factor", f["scale_factor"], integer=True))
    arrival = _num(where, names, "arrival_time", f["arrival_time"])
    weight = _num(where, names, "priority_weight", f["priority_weight"]) if "priority_weight" in f else 1.0
    slo = _num(where, names, "SLO", f["SLO"]) if "SLO" in f else -1.0
    if arrival < 0:
        raise ClusterError(f"{_col(where, names, 'arrival_time')}: must be >= 0, got {f['arrival_time']!r}")
    if steps <= 0:
        raise ClusterError(f"{_col(where, names, 'total_steps')}: must be > 0, got {f['total_steps']!r}")
    if scale < 1:
        if skip_unknown:
            return (f["job_type"], scale)
        raise ClusterError(f"{_col(where, names, 'scale_factor')}: must be >= 1, got {f['scale_factor']!r} "
                           f"(--skip-unknown skips such rows)")
    if weight <= 0:
        raise ClusterError(f"{_col(where, names, 'priority_weight')}: must be > 0, got {f['priority_weight']!r}")
    key = (f["job_type"], scale)
    if table is not None and not table.has(key):
        if skip_unknown:
            return key
        known = ", ".join(table.job_types()[:6])
        scales = sorted(s for t, s in table.keys if t == f["job_type"])
        hint = (f"that type runs at scale factors {scales}" if scales
                else f"known types include {known}, ...")
        raise ClusterError(f"{_col(where, names, 'job_type')}: {f['job_type']!r} with scale factor {scale} is not "
                           f"in the throughput table ({hint}); --skip-unknown skips such rows")
    return Job(job_id, f["job_type"], scale, steps, arrival, weight,
               slo if slo > 0 else None, f["command"])


def load_trace(path: str | Path, table: ThroughputTable | None = None,
               skip_unknown: bool = False) -> tuple[list[Job], dict[tuple[str, int], int]]:
    """The jobs of a trace file (either format) in file order, and the rows skipped
    per (type, scale factor). Raises ClusterError on the first bad line.

    ``skip_unknown`` drops rows whose (type, scale factor) is not in ``table`` or
    whose scale factor is 0 (the msr traces contain both); it never hides
    malformed lines. Job ids count the rows kept.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ClusterError(f"{path}: trace file not found") from None
    except UnicodeDecodeError as exc:
        raise ClusterError(f"{path}: not a text file ({exc})") from None
    jobs: list[Job] = []
    skipped: dict[tuple[str, int], int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        job = parse_line(line, f"{path}:{lineno}", len(jobs), table, skip_unknown)
        if isinstance(job, tuple):
            skipped[job] = skipped.get(job, 0) + 1
        else:
            jobs.append(job)
    if not jobs:
        more = f" ({sum(skipped.values())} rows skipped as unknown)" if skipped else ""
        raise ClusterError(f"{path}: trace has no jobs{more}")
    return jobs, skipped


def read_trace(path: str | Path, table: ThroughputTable | None = None,
               skip_unknown: bool = False) -> list[Job]:
    """All jobs of a trace file; see ``load_trace``."""
    return load_trace(path, table, skip_unknown)[0]


def write_trace(path: str | Path, jobs: list[Job]) -> None:
    """Write jobs in the 10-column format, atomically (temp file, then rename)."""
    path = Path(path)
    rows = []
    for j in jobs:
        slo = j.slo if j.slo is not None else -1.0
        rows.append("\t".join([j.job_type, j.trace_command or "-", "-", "--num_steps", "0",
                               str(int(round(j.total_steps))), str(j.scale_factor),
                               str(j.priority_weight), f"{slo:.6f}", str(j.arrival_time)]))
    write_text(path, "\n".join(rows) + "\n")
