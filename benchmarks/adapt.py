"""Adaptive training benchmark: elastic resize vs restart, monitoring overhead, time to
accuracy on an emulated cluster with a congested link, and the gain of re-planning.

    python benchmarks/adapt.py [--quick] [--json out.json] [--no-netns]

1. Resize latency, GPT example (examples/gpt_spec.py: AdamW + warm-up): one elastic job
   resizes 2 -> 4 and 4 -> 2 workers in place (warm standbys, new process group, state
   broadcast); latency = resize decision -> first completed step in the new world. The
   peer, measured in the same run, is a torchrun-style restart: write a checkpoint, start
   a fresh world of the new size (new interpreters, as torchrun starts them, so each imports
   torch; new rendezvous), load, complete one step.
   Target: >= 5x faster.
2. Monitoring overhead: a 2-rank loop (digits MLP) with the monitors on and off,
   alternating every step; overhead = median step time on / off - 1. Target < 5%. Also
   the same ratio of the step's thread CPU time (the monitors' own computation, without
   the wait for the other rank in the all-reduce), and the per-step in-memory snapshot of
   the adaptive loop (weft.adapt.snapshot) next to the copy.deepcopy it replaced.
3. Time to accuracy (needs root: network namespaces, weft.collectives.emulate): 4 hosts of
   the emulated `two-node` shape (two machines of two devices: fast links inside, slow
   rails between), one rail congested to 1/4 of its rate. Each host runs `weft train
   --model examples/gpt_spec.py --nnodes 4:4 --devices <its device>`. Static: S-SGD on
   gloo's all-reduce. Adaptive: the same S-SGD with the job's (nominal) topology and the
   `replan_on_slowdown` policy: synchronising is slower than the plan predicts, so the
   links are re-measured and the all-reduce re-planned around the congested rail. Both
   train the same global batches (same losses per step); the target loss is the one the
   static run reaches at 80% of its steps (smoothed). Target: adaptive >= 1.3x sooner.
   The full run adds the nominal plan kept without re-planning (the adaptation's share).
4. Re-plan gain (same fixture, no congestion): 2 workers on one emulated machine; the
   other machine's 2 hosts join and the job grows to 4 at step 5. Step time after
   the change with the all-reduce re-planned for the new members vs the old algorithm
   (ring, the best for the first 2) kept; printed with the cost model's predictions.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from _adapt_emulated import CONGESTED, MBIT_PER_GBS, replan_gain, time_to_accuracy  # noqa: E402
from _common import emit, figure, parser  # noqa: E402

from weft.adapt.config import AdaptConfig  # noqa: E402
from weft.adapt.policy import ScheduleResize  # noqa: E402
from weft.launch import launch  # noqa: E402

GPT_SPEC = str(ROOT / "examples" / "gpt_spec.py")


def gpt_workload():
    from weft.adapt.workload import from_spec

    return from_spec(GPT_SPEC)


class _StaticMembership:
    """Membership of a plain (non-elastic) process group, for in-process measurements."""

    epoch, store = 0, None

    @property
    def rank(self):
        return dist.get_rank()

    @property
    def world(self):
        return dist.get_world_size()

    @property
    def members(self):
        return list(range(self.world))

    def capacity(self, max_workers: int) -> int:  # a fixed world: no other machine to use
        return self.world


# -- 1. resize latency vs restart ------------------------------------------------------------
def _restart_rank(ckpt: str, cfg: AdaptConfig) -> float:
    """A freshly started rank: load the checkpoint, do one step; returns completion time."""
    from weft.adapt import durable
    from weft.adapt.trainer import Trainer
    from weft.adapt.worker import built_workload

    built = built_workload(cfg, gpt_workload())
    tr = Trainer(cfg, built, None, _StaticMembership(), 0)
    msd, osd, extra = durable.read(ckpt, built.make_model, built.make_optimizer)
    tr.engine.load_fqn(msd, osd)
    tr.load_extras(extra)
    tr.train_step()
    return time.time()


def restart_latency(cfg: AdaptConfig, new_world: int) -> float:
    """Checkpoint (a GPT after one step: model + AdamW state), then a fresh world of
    `new_world` processes loads it and completes one step."""
    from weft.adapt import durable
    from weft.adapt.engine import LocalEngine
    from weft.adapt.trainer import Trainer
    from weft.adapt.worker import built_workload

    built = built_workload(cfg, gpt_workload())
    eng = LocalEngine(built)
    tr = Trainer.__new__(Trainer)  # only its extras() are needed: a fresh trainer's state
    Trainer.__init__(tr, cfg, built, None, _StaticMembership(), 0)
    x, y = built.train[0]
    built.loss_fn(eng.model(x[None]), y[None]).backward()
    eng.opt.step()
    msd, osd = eng.fqn_state()
    with tempfile.TemporaryDirectory() as d:
        ckpt = os.path.join(d, "ckpt")
        t0 = time.time()
        durable.write(ckpt, msd, osd, {**tr.extras(), "sched": None}, {"step": 0, "world": 2})
        # torchrun starts every worker as a fresh interpreter that imports torch; weft's
        # forkserver (torch already imported) would make this restart cheaper than any
        # torchrun restart is
        old = os.environ.get("WEFT_START_METHOD")
        os.environ["WEFT_START_METHOD"] = "spawn"
        try:
            done = launch(_restart_rank, new_world, args=(ckpt, cfg), timeout=300)
        finally:
            if old is None:
                os.environ.pop("WEFT_START_METHOD")
            else:
                os.environ["WEFT_START_METHOD"] = old
        return max(done) - t0


def resize_latency(quick: bool) -> tuple[dict, dict]:
    from weft.adapt.host import run_elastic

    up, down = (12, 24) if quick else (30, 60)
    cfg = AdaptConfig(workers=2, max_workers=4, epochs=100, max_steps=down + 8, batch_size=16,
                      batch_rule="global", standby=2)
    out = run_elastic(cfg, ScheduleResize({up: 4, down: 2}), timeout=900, workload=gpt_workload())
    r0 = out["reports"][0]
    lat = {e["new"]: e["latency_s"] for e in r0["events"] if e["kind"] == "resize"}
    restart = {4: restart_latency(cfg, 4), 2: restart_latency(cfg, 2)}
    return lat, restart


# -- 2. monitor overhead ---------------------------------------------------------------------
def _overhead_rank(steps: int) -> dict:
    """Step times with the monitors on and off, alternating every step (both modes see the
    same machine load): wall and this thread's CPU time, whose difference is what the
    monitors compute (their statistics ride in the gradient all-reduce, adding no
    collective); then the loop's per-step snapshot, by weft.adapt.snapshot and by
    copy.deepcopy (what it was)."""
    import copy

    from weft.adapt.snapshot import copy_state
    from weft.adapt.trainer import Trainer
    from weft.adapt.worker import built_workload

    torch.manual_seed(0)
    cfg = AdaptConfig(workers=2, epochs=10**6, hidden=64, progress_seconds=0)
    tr = Trainer(cfg, built_workload(cfg), None, _StaticMembership(), 0)
    wall: dict = {True: [], False: []}
    cpu: dict = {True: [], False: []}
    for s in range(2 * steps):
        on = s % 2 == 0
        tr.monitors.enabled = on
        t, c = time.perf_counter(), time.thread_time()
        tr.train_step()
        if s >= 20:
            cpu[on].append(time.thread_time() - c)
            wall[on].append(time.perf_counter() - t)
    snap = {}
    for name, fn in (("copy_state", copy_state), ("deepcopy", copy.deepcopy)):
        ts = []
        for _ in range(max(20, steps // 10)):
            t = time.perf_counter()
            fn(tr.state())
            ts.append(time.perf_counter() - t)
        snap[name] = statistics.median(ts)
    med = statistics.median
    return {"on": med(wall[True]), "off": med(wall[False]), "cpu_on": med(cpu[True]),
            "cpu_off": med(cpu[False]), **snap}


def monitor_overhead(quick: bool) -> dict:
    res = launch(_overhead_rank, 2, args=(1000 if quick else 3000,), timeout=300)
    return {k: statistics.mean(r[k] for r in res) for k in res[0]}


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--no-netns", action="store_true",
                   help="skip the emulated-cluster parts (3 and 4)")
    args = p.parse_args(argv)
    figs: list[dict] = []
    notes = ["resize and restart: GPT example (118k parameters, AdamW), local gloo ranks; "
             "monitors: digits MLP, 2 ranks"]
    lat, restart = resize_latency(args.quick)
    for new, name in ((4, "2to4"), (2, "4to2")):
        figs += [figure(f"resize/{name} latency (in place)", lat[new], "s", better="lower"),
                 figure(f"resize/{name} torchrun-style restart", restart[new], "s",
                        better="lower"),
                 figure(f"resize/{name} speedup vs restart", restart[new] / lat[new], "x",
                        target=5.0)]
    m = monitor_overhead(args.quick)
    figs += [figure("monitors/step time on", m["on"] * 1e3, "ms", better="lower"),
             figure("monitors/step time off", m["off"] * 1e3, "ms", better="lower"),
             figure("monitors/overhead", (m["on"] / m["off"] - 1) * 100, "%", target=5.0,
                    better="lower"),
             figure("monitors/overhead, thread CPU time", (m["cpu_on"] / m["cpu_off"] - 1) * 100,
                    "%", better="lower"),
             figure("loop/snapshot per step", m["copy_state"] * 1e3, "ms", better="lower"),
             figure("loop/snapshot per step, copy.deepcopy", m["deepcopy"] * 1e3, "ms",
                    better="lower")]
    notes.append("monitors: median step of 2 ranks over the quick/full 1000/3000 steps per "
                 "mode; the wall figure includes waiting in the all-reduce for the other "
                 "rank (on a loaded machine that jitter exceeds the monitors' cost); the "
                 "thread CPU time excludes it")
    if not args.no_netns:
        from weft.collectives.emulate.netns import available

        ok, why = available()
        if not ok:
            notes.append(f"emulated-cluster parts skipped: {why}")
        else:
            with tempfile.TemporaryDirectory(prefix="weft-adapt-bench-") as d:
                for part in (time_to_accuracy, replan_gain):
                    f, note = part(args.quick, Path(d))
                    figs += f
                    notes.append(note)
            notes.append(f"emulated: two-node shape (2 machines x 2 devices), "
                         f"{MBIT_PER_GBS:g} Mbit/s per GB/s; time to accuracy with rail "
                         f"{CONGESTED[0]}-{CONGESTED[1]} at x{CONGESTED[2]:g}; GPT example, "
                         "global batch 64")
    return emit(figs, args.json, "weft.adapt benchmark", conditions="\n".join(notes))


if __name__ == "__main__":
    sys.exit(main())
