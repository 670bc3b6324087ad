"""Adaptive training benchmark: elastic resize vs a full restart, and monitoring overhead.

    python benchmarks/adapt.py [--quick] [--json out.json]

1. Resize latency: one elastic job resizes 2 -> 4 and 4 -> 2 workers in place
   (warm standby joiners, new process group, state broadcast); latency is
   from the resize decision to the first completed step in the new world.
   The peer, measured in the same run, is a torchrun-style restart: write a
   checkpoint, start a fresh world of the new size (new processes, new
   rendezvous), load the checkpoint, complete one step. Target: >= 5x faster.
2. Monitoring overhead: the same 2-rank training loop with the monitors
   (noise scale, variance/SNR, throughput) on and off, alternating every
   step in one job; overhead = median step time on / off - 1. Target < 5%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist

from weft.adapt.config import AdaptConfig
from weft.adapt.host import run_elastic
from weft.adapt.worker import build_model, datasets
from weft.adapt.policy import ScheduleResize
from weft.launch import launch


def _restart_rank(ckpt: str, t0: float, cfg: AdaptConfig) -> float:
    """A freshly started rank: load the checkpoint, do one step; returns completion time."""
    from weft.adapt.trainer import Trainer
    from weft.parallel.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    model = build_model(cfg)
    tr = Trainer(cfg, model, datasets(cfg)[0], None, _StaticMembership(), 0)
    tr.load(state)
    tr.train_step()
    return time.time()


class _StaticMembership:
    """Membership of a plain (non-elastic) process group, for in-process measurements."""

    epoch, store = 0, None

    @property
    def rank(self):
        return dist.get_rank()

    @property
    def world(self):
        return dist.get_world_size()

    def capacity(self, max_workers: int) -> int:  # a fixed world: no other machine to use
        return self.world


def restart_latency(cfg: AdaptConfig, state: dict, new_world: int) -> float:
    from weft.parallel.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as d:
        ckpt = os.path.join(d, "ckpt.pt")
        t0 = time.time()
        save_checkpoint(ckpt, state)
        done = launch(_restart_rank, new_world, args=(ckpt, t0, cfg), timeout=60)
        return max(done) - t0


def resize_latency(quick: bool) -> tuple[dict, dict]:
    up, down = (500, 600) if quick else (1000, 1200)
    cfg = AdaptConfig(workers=2, max_workers=4, epochs=100, max_steps=down + 20, hidden=64,
                      standby=2)
    out = run_elastic(cfg, ScheduleResize({up: 4, down: 2}), timeout=300)
    r0 = out["reports"][0]
    lat = {e["new"]: e["latency_s"] for e in r0["events"] if e["kind"] == "resize"}
    model = build_model(cfg)
    state = {"model": model.state_dict(), "opt": torch.optim.SGD(model.parameters(), lr=0.1,
                                                                 momentum=0.9).state_dict(),
             "step": 0, "epoch": 0, "consumed": 0, "batch_size": 16, "strategy": "sgd",
             "round": 0, "monitors": {"g2": {"decay": .9, "value": 0, "weight": 0},
                                      "tr": {"decay": .9, "value": 0, "weight": 0}, "last": {}},
             "policy": {}, "last_step_time": 0.0}
    restart = {4: restart_latency(cfg, state, 4), 2: restart_latency(cfg, state, 2)}
    return lat, restart


def _overhead_rank(steps: int) -> dict:
    from weft.adapt.trainer import Trainer

    torch.manual_seed(0)
    cfg = AdaptConfig(workers=2, epochs=10**6, hidden=64)
    tr = Trainer(cfg, build_model(cfg), datasets(cfg)[0], None, _StaticMembership(), 0)
    times = {True: [], False: []}
    for s in range(2 * steps):  # alternate every step: both modes see the same machine load
        on = s % 2 == 0
        tr.cfg.monitor = tr.monitors.enabled = on
        t = time.perf_counter()
        tr.train_step()
        if s >= 20:
            times[on].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def monitor_overhead(quick: bool) -> tuple[float, float, float]:
    res = launch(_overhead_rank, 2, args=(600 if quick else 3000,), timeout=120)
    on = statistics.mean(r[True] for r in res)
    off = statistics.mean(r[False] for r in res)
    return on, off, (on / off - 1) * 100


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    lat, restart = resize_latency(args.quick)
    on, off, pct = monitor_overhead(args.quick)
    rows = []
    for new, name in ((4, "2to4"), (2, "4to2")):
        rows += [{"name": f"resize_{name}_latency", "value": lat[new], "unit": "s",
                  "target": None, "better": "lower"},
                 {"name": f"restart_{name}_latency", "value": restart[new], "unit": "s",
                  "target": None, "better": "lower"},
                 {"name": f"resize_{name}_speedup_vs_restart", "value": restart[new] / lat[new],
                  "unit": "x", "target": 5.0, "better": "higher"}]
    rows += [{"name": "step_time_monitors_on", "value": on * 1e3, "unit": "ms", "target": None,
              "better": "lower"},
             {"name": "step_time_monitors_off", "value": off * 1e3, "unit": "ms", "target": None,
              "better": "lower"},
             {"name": "monitor_overhead", "value": pct, "unit": "%", "target": 5.0,
              "better": "lower"}]
    t = Table(title="weft.adapt benchmark (same run: elastic resize vs restart; monitors on/off)")
    for c in ("metric", "value", "target"):
        t.add_column(c)
    for r in rows:
        ok = "" if r["target"] is None else (
            "  ok" if (r["value"] >= r["target"] if r["better"] == "higher"
                       else r["value"] < r["target"]) else "  MISSED")
        t.add_row(r["name"], f"{r['value']:.4g} {r['unit']}",
                  "" if r["target"] is None else f"{r['target']:g}{ok}")
    Console().print(t)
    if args.json:
        from weft.atomic import write_json

        write_json(args.json, rows, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
