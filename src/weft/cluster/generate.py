"""Generate jobs the way Gavel's simulations did (see the Gavel data README).

Poisson arrivals at ``rate`` jobs/hour; duration on a V100 of 10^U(1.5, 3)
minutes with probability 0.8 else 10^U(3, 4); scale factor 1 (single) or
1/2/4/8 with probabilities 0.7/0.1/0.15/0.05 (multi); type drawn uniformly,
redrawn until it can run at the chosen scale factor; 20% of jobs get weight 5
when ``priorities`` is set.
"""

from __future__ import annotations

import numpy as np

from weft.cluster.model import ClusterError, Job
from weft.cluster.throughputs import ThroughputTable


def generate_jobs(table: ThroughputTable, num_jobs: int, rate: float | None, seed: int = 0,
                  multi_gpu: bool = False, priorities: bool = False,
                  reference_type: str = "v100") -> list[Job]:
    """``rate`` None (or 0) makes a static trace: every job arrives at t=0."""
    if num_jobs < 1:
        raise ClusterError(f"num_jobs must be >= 1, got {num_jobs}")
    if reference_type not in table.types:
        raise ClusterError(f"reference type {reference_type!r} not in table types {table.types}")
    rng = np.random.default_rng(seed)
    ref = table.types.index(reference_type)
    singles = table.job_types(scale=1)
    jobs, t = [], 0.0
    for i in range(num_jobs):
        if rate:
            t += rng.exponential(3600.0 / rate)
        scale = int(rng.choice([1, 2, 4, 8], p=[0.7, 0.1, 0.15, 0.05])) if multi_gpu else 1
        while True:
            name = singles[rng.integers(len(singles))]
            if table.has((name, scale)) and table.iso[(name, scale)][ref] > 0:
                break
        if rng.random() < 0.8:
            minutes = 10 ** rng.uniform(1.5, 3)
        else:
            minutes = 10 ** rng.uniform(3, 4)
        steps = minutes * 60.0 * table.iso[(name, scale)][ref]
        weight = 5.0 if priorities and rng.random() < 0.2 else 1.0
        jobs.append(Job(i, name, scale, steps, t, weight))
    return jobs
