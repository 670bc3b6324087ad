"""Adaptive training under torchrun: `torchrun ... -m weft.cli train --policy P`.

torchrun starts WORLD_SIZE processes (MIN..MAX nodes x --nproc-per-node) and
gives them its agent's c10d store (MASTER_ADDR:MASTER_PORT). weft keeps its
membership in that store, under `weft/<run id>/<restart count>/`: ranks below
`workers` train, the others wait as warm standbys, and every resize is then
weft's (no process is restarted). Run torchrun with `--max-restarts=0`:
torchrun would otherwise restart every worker on any failure. A worker that
dies takes the workers of its node with it (torchrun stops that node's
group); the workers on the other nodes re-form their group and go on. A node
that joins later makes torchrun restart everyone (its design): to add
machines while the job runs, use `weft train --nnodes MIN:MAX` (weft's own
node agents) instead.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from typing import Any

from weft.adapt.config import AdaptConfig, ConfigError


def run_under_torchrun(cfg: AdaptConfig, policy: Any, workload=None,
                       finish_timeout: float = 60.0) -> dict | None:
    """This process's part of the job. On the process that ends as rank 0 returns
    {"reports", "pids", "dead"} like `run_elastic`; elsewhere None."""
    from weft.adapt.host import collect
    from weft.adapt.worker import worker_main
    from weft.adapt.membership import connect

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cfg.workers > world:
        raise ConfigError(f"workers={cfg.workers}: torchrun started only {world} process(es)")
    cfg = cfg.replace(max_workers=min(cfg.max_workers, world))
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    prefix = (f"weft/{os.environ['TORCHELASTIC_RUN_ID']}/"
              f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/")
    store = connect(host, port, cfg.join_timeout, prefix)
    if rank == 0:
        store.add("wid_seq", world)
        store.set("members/0", json.dumps(list(range(cfg.workers))))
    policy, workload = pickle.loads(pickle.dumps(policy)), pickle.loads(pickle.dumps(workload))
    report = worker_main(cfg, policy, rank, host, port, rank >= cfg.workers, prefix,
                         workload=workload)
    store.set(f"report/{rank}", pickle.dumps(report))
    if report.get("left") is not False or report.get("rank") != 0:
        return None
    store.set("shutdown", "1")  # release the standbys
    deadline = time.monotonic() + finish_timeout
    while time.monotonic() < deadline and not all(
            store.check([f"report/{w}"]) or _gone(store, w, cfg) for w in range(world)):
        time.sleep(0.05)
    return collect(store)


def _gone(store, wid: int, cfg: AdaptConfig) -> bool:
    from weft.adapt.membership import beat_age

    age = beat_age(store, f"hb/{wid}")
    return age is not None and age > cfg.hb_timeout
