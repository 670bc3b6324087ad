"""Gavel job traces: read (10-column current format, 7-column msr format) and write.

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


def _num(where: str, name: str, text: str, integer: bool = False) -> float:
    if text.strip() == "":
        raise ClusterError(f"{where}: field '{name}' is empty")
    try:
        value = float(text)
    except ValueError:
        raise ClusterError(f"{where}: field '{name}' must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ClusterError(f"{where}: field '{name}' must be finite, got {text!r}")
    if integer and value != int(value):
        raise ClusterError(f"{where}: field '{name}' must be an integer, got {text!r}")
    return value


def parse_line(line: str, where: str, job_id: int, table: ThroughputTable | None,
               skip_unknown: bool = False) -> Job | None:
    cols = line.rstrip("\r\n").split("\t")
    if len(cols) == 10:
        names = FIELDS10
    elif len(cols) == 7:
        names = FIELDS7
    else:
        raise ClusterError(f"{where}: expected 10 tab-separated fields ({', '.join(FIELDS10)}) "
                            f"or the 7-field msr format, got {len(cols)} (missing field?)")
    f = dict(zip(names, cols))
    if not f["job_type"].strip():
        raise ClusterError(f"{where}: field 'job_type' is empty")
    steps = _num(where, "total_steps", f["total_steps"])
    scale = int(_num(where, "scale_factor", f["scale_factor"], integer=True))
    arrival = _num(where, "arrival_time", f["arrival_time"])
    weight = _num(where, "priority_weight", f.get("priority_weight", "1"))
    slo = _num(where, "SLO", f.get("SLO", "-1"))
    if arrival < 0:
        raise ClusterError(f"{where}: field 'arrival_time' must be >= 0, got {f['arrival_time']!r}")
    if steps <= 0:
        raise ClusterError(f"{where}: field 'total_steps' must be > 0, got {f['total_steps']!r}")
    if scale < 1:
        if skip_unknown:
            return None
        raise ClusterError(f"{where}: field 'scale_factor' must be >= 1, got {f['scale_factor']!r}")
    if weight <= 0:
        raise ClusterError(f"{where}: field 'priority_weight' must be > 0, got {f['priority_weight']!r}")
    key = (f["job_type"], scale)
    if table is not None and not table.has(key):
        if skip_unknown:
            return None
        known = ", ".join(table.job_types()[:6])
        raise ClusterError(f"{where}: unknown job type {f['job_type']!r} with scale factor {scale} "
                            f"(not in the throughput table; known types include {known}, ...)")
    return Job(job_id, f["job_type"], scale, steps, arrival, weight,
               slo if slo > 0 else None, f["command"])


def read_trace(path: str | Path, table: ThroughputTable | None = None,
               skip_unknown: bool = False) -> list[Job]:
    """All jobs of a trace file, in file order; raises ClusterError on the first bad line.

    ``skip_unknown`` drops rows whose (type, scale factor) is not in ``table``
    (the msr traces contain such rows); it never hides malformed lines.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ClusterError(f"{path}: trace file not found") from None
    except UnicodeDecodeError as exc:
        raise ClusterError(f"{path}: not a text file ({exc})") from None
    jobs: list[Job] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        job = parse_line(line, f"{path}:{lineno}", len(jobs), table, skip_unknown)
        if job is not None:
            jobs.append(job)
    if not jobs:
        raise ClusterError(f"{path}: trace has no jobs")
    return jobs


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
