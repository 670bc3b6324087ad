"""weft's own YAML specs for a cluster and a list of jobs.

cluster.yaml::

    accelerators:            # type: count, or type: {count, per_server, price}
      fast: {count: 2, per_server: 2, price: 3.0}
      slow: 2
    throughputs:             # a Gavel JSON path (relative to this file) or a mapping
      mlp: {fast: 20.0, slow: 5.0}      # steps/s of each job type on each type
    round_seconds: 360       # optional

jobs.yaml (what each job runs: ``tasks.py``)::

    jobs:
      - {type: mlp, scale_factor: 2, steps: 40, arrival: 0, weight: 1, slo: null, model: my_model.py}
      - {type: sim, steps: 100, command: "python sim.py --checkpoint {checkpoint}"}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from weft.cluster.model import Cluster, ClusterError, Job
from weft.cluster.tasks import FIELDS as TASK_FIELDS
from weft.cluster.tasks import parse_task
from weft.cluster.throughputs import ThroughputTable
from weft.files import read_yaml


@dataclass
class ClusterSpec:
    cluster: Cluster
    table: ThroughputTable
    round_seconds: float = 360.0
    extra: dict | None = None


def load_cluster(path: str | Path) -> ClusterSpec:
    path = Path(path)
    data = read_yaml(path, ClusterError, "cluster", mapping=True)
    acc = data.get("accelerators")
    if not isinstance(acc, dict) or not acc:
        raise ClusterError(f"{path}: field 'accelerators' must map accelerator types to counts")
    counts, per_server, prices = {}, {}, {}
    for t, v in acc.items():
        if isinstance(v, dict):
            unknown = set(v) - {"count", "per_server", "price"}
            if unknown:
                raise ClusterError(f"{path}: accelerators.{t}: unknown field(s) {sorted(unknown)}")
            if "count" not in v:
                raise ClusterError(f"{path}: accelerators.{t}: missing field 'count'")
            counts[t] = v["count"]
            if "per_server" in v:
                per_server[t] = int(v["per_server"])
            if "price" in v:
                prices[t] = float(v["price"])
        else:
            counts[t] = v
    cluster = Cluster(counts, per_server, prices)
    tp = data.get("throughputs")
    if isinstance(tp, str):
        tp_path = (path.parent / tp) if not Path(tp).is_absolute() else Path(tp)
        table = ThroughputTable.load(tp_path, cluster.types)
    elif isinstance(tp, dict):
        table = ThroughputTable.from_mapping(tp, cluster.types, where=f"{path}: throughputs")
    else:
        raise ClusterError(f"{path}: field 'throughputs' must be a Gavel JSON path or a mapping")
    rs = data.get("round_seconds", 360.0)
    if not isinstance(rs, (int, float)) or rs <= 0:
        raise ClusterError(f"{path}: field 'round_seconds' must be > 0, got {rs!r}")
    extra = {k: v for k, v in data.items() if k not in ("accelerators", "throughputs", "round_seconds")}
    return ClusterSpec(cluster, table, float(rs), extra)


def load_jobs(path: str | Path, table: ThroughputTable | None = None) -> list[Job]:
    """Jobs from a YAML spec; all are validated before any is returned."""
    path = Path(path)
    data = read_yaml(path, ClusterError, "jobs", mapping=True)
    items = data.get("jobs")
    if not isinstance(items, list) or not items:
        raise ClusterError(f"{path}: field 'jobs' must be a non-empty list")
    jobs = []
    for i, item in enumerate(items):
        where = f"{path}: jobs[{i}]"
        if not isinstance(item, dict):
            raise ClusterError(f"{where}: expected a mapping")
        for req in ("type", "steps"):
            if req not in item:
                raise ClusterError(f"{where}: missing field '{req}'")
        unknown = set(item) - {"type", "scale_factor", "scale_factors", "steps", "arrival", "weight", "slo", "name",
                               *TASK_FIELDS}
        if unknown:
            raise ClusterError(f"{where}: unknown field(s) {sorted(unknown)}")
        task = parse_task(item, where, path.parent)
        try:
            job = Job(i, str(item["type"]), int(item.get("scale_factor", 1)), float(item["steps"]),
                      float(item.get("arrival", 0.0)), float(item.get("weight", 1.0)),
                      None if item.get("slo") is None else float(item["slo"]), name=str(item.get("name", "")), task=task,
                      scale_factors=None if item.get("scale_factors") is None
                      else tuple(int(x) for x in item["scale_factors"]))
        except ClusterError as exc:
            raise ClusterError(f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ClusterError(f"{where}: bad value ({exc})") from None
        if table is not None and not table.has(job.key):
            raise ClusterError(f"{where}: unknown job type {job.job_type!r} with scale factor "
                                f"{job.scale_factor} (throughput table has {table.job_types()})")
        jobs.append(job)
    return jobs
