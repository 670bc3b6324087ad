"""Adaptive training benchmark: elastic resize vs restart, monitoring overhead, time to
accuracy on an emulated cluster with a congested link, and the gain of re-planning.

    python benchmarks/adapt.py [--quick] [--json out.json] [--no-netns]

1. Resize latency, GPT example (examples/gpt_spec.py: AdamW + warm-up): one elastic job
   resizes 2 -> 4 and 4 -> 2 workers in place (warm standbys, new process group, state
   broadcast); latency = resize decision -> first completed step in the new world. The
   peer, measured in the same run, is a torchrun-style restart: write a checkpoint, start
   a fresh world of the new size (new processes, new rendezvous), load, complete one step.
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

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
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
        done = launch(_restart_rank, new_world, args=(ckpt, cfg), timeout=300)
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


# -- 3./4. on an emulated cluster ------------------------------------------------------------
MBIT_PER_GBS = 4.0  # emulated Mbit/s per GB/s of topology bandwidth (two-node, as collectives.py)
CONGESTED = ("a1", "b1", 0.25)  # this rail runs at a quarter of its rate
PORT = 29611


def _topologies(congested: bool):
    """(cluster topology as shaped, the nominal emulated topology the job is told)."""
    from weft.collectives.emulate.netns import NetnsCluster
    from weft.collectives.emulate.shapes import two_node
    from weft.topology.model import Topology

    nominal = two_node(2)
    if not congested:
        return nominal, NetnsCluster(nominal, MBIT_PER_GBS).emulated_topology()
    a, b, f = CONGESTED
    real = Topology(name="two-node2-congested")
    for d in nominal.devices:
        real.graph.add_node(d.name, device=d)
    for ln in nominal.links:
        k = f if {ln.src, ln.dst} == {a, b} else 1.0
        real.add_link(ln.src, ln.dst, ln.bandwidth * k, ln.latency, ln.kind, bidirectional=False)
    return real, NetnsCluster(nominal, MBIT_PER_GBS).emulated_topology()


def _job(cluster, folder: Path, name: str, policy: str, args: list[str], first: list[str],
         later: list[str], nnodes: str, timeout: float) -> dict:
    """Run `weft train` on one emulated host per device (the first device hosts the job's
    store); hosts in `later` start once the others have joined. Returns the host's report."""
    out = folder / name
    pol = folder / f"{name}.yaml"
    pol.write_text(policy)
    host = first[0]
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    procs, logs = {}, {}

    def start(dev: str) -> None:
        ifname = cluster._ifname(dev, next(iter(cluster.topology.graph.successors(dev))))
        cmd = ["ip", "netns", "exec", cluster.ns[dev], sys.executable, "-m", "weft.cli",
               "train", "--policy", str(pol), "--model", GPT_SPEC, "--nnodes", nnodes,
               "--nproc-per-node", "1", "--rdzv-endpoint", f"{cluster.addr[host]}:{PORT}",
               "--devices", dev, "--out", str(out), *args]
        logs[dev] = open(folder / f"{name}-{dev}.log", "w")
        procs[dev] = subprocess.Popen(cmd, env=dict(env, GLOO_SOCKET_IFNAME=ifname),
                                      stdout=logs[dev], stderr=subprocess.STDOUT,
                                      start_new_session=True)

    deadline = time.monotonic() + timeout
    try:
        for dev in first:
            start(dev)
            time.sleep(0.5 if dev == host else 0.0)
        if later:  # once every host of `first` has joined the job
            while sum("joined the job" in (folder / f"{name}-{d}.log").read_text()
                      for d in first[1:]) < len(first) - 1:
                if time.monotonic() > deadline or any(p.poll() for p in procs.values()):
                    raise RuntimeError(f"{name}: hosts {first} did not join")
                time.sleep(0.2)
            for dev in later:
                start(dev)
        while any(p.poll() is None for p in procs.values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: did not finish within {timeout:.0f} s")
            time.sleep(0.5)
        bad = {d: p.returncode for d, p in procs.items() if p.returncode}
        if bad:
            raise RuntimeError(f"{name}: host(s) failed {bad}; logs in {folder}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait(timeout=10)
        for f in logs.values():
            f.close()
    (report,) = out.glob("*/report.json")
    return json.loads(report.read_text())


def _smooth(history: list[dict], decay: float = 0.9) -> list[tuple[int, float, float]]:
    """(step, EMA of the loss, seconds since training started) per step."""
    t0 = history[0]["time"] - history[0]["step_time"]
    ema, out = None, []
    for h in history:
        ema = h["loss"] if ema is None else decay * ema + (1 - decay) * h["loss"]
        out.append((h["step"], ema, h["time"] - t0))
    return out


def _time_to(history: list[dict], target: float) -> float:
    for _, loss, t in _smooth(history):
        if loss <= target:
            return t
    return float("inf")


def time_to_accuracy(quick: bool, folder: Path) -> tuple[list[dict], str]:
    from weft.collectives.emulate.netns import NetnsCluster
    from weft.topology.io import save

    steps = 40 if quick else 300
    real, nominal = _topologies(congested=True)
    topo = save(nominal, folder / "two-node-nominal.yaml")
    train = (f"train: {{workers: 4, max_workers: 4, batch_size: 16, batch_rule: global, "
             f"max_steps: {steps}, pg_timeout: 60, join_timeout: 240, capacity_every: 0}}\n")
    devs = ["a0", "a1", "b0", "b1"]
    runs = {"static": (train + "policies: []\n", []),
            "adaptive": (train + "policies:\n  - replan_on_slowdown: {factor: 1.5, settle: 4}\n",
                         ["--topology", str(topo)])}
    if not quick:
        runs["nominal_plan_kept"] = (train + "policies: []\n", ["--topology", str(topo)])
    reports = {}
    with NetnsCluster(real, mbit_per_gbs=MBIT_PER_GBS) as cluster:
        for name, (policy, args) in runs.items():
            reports[name] = _job(cluster, folder, f"tta-{name}", policy, args, devs, [], "4:4",
                                 timeout=3600)
    static = _smooth(reports["static"]["history"])
    target = static[int(0.8 * len(static)) - 1][1]
    tta = {k: _time_to(r["history"], target) for k, r in reports.items()}
    replans = [e for e in reports["adaptive"]["events"] if e["kind"] == "replan"]
    figs = [figure("tta/target loss (static's smoothed loss at 80% of its steps)", target,
                   "nats", better="lower"),
            figure("tta/static S-SGD (gloo all-reduce)", tta["static"], "s", better="lower"),
            figure("tta/adaptive (re-plans on the measured links)", tta["adaptive"], "s",
                   better="lower"),
            figure("tta/adaptive speedup vs static", tta["static"] / tta["adaptive"], "x",
                   target=1.3)]
    if "nominal_plan_kept" in tta:
        figs.append(figure("tta/nominal plan kept (no re-plan)", tta["nominal_plan_kept"], "s",
                           better="lower"))
        figs.append(figure("tta/re-planning's share (nominal kept / adaptive)",
                           tta["nominal_plan_kept"] / tta["adaptive"], "x"))
    notes = "; ".join(f"step {e['step']} {e['why']}: {e['old_algorithm']} -> {e['algorithm']}"
                      for e in replans)
    return figs, f"adaptive run's re-plans: {notes}"


def replan_gain(quick: bool, folder: Path) -> tuple[list[dict], str]:
    from weft.collectives.emulate.netns import NetnsCluster
    from weft.topology.io import save

    steps = 30 if quick else 80
    real, nominal = _topologies(congested=False)
    topo = save(nominal, folder / "two-node.yaml")
    # at step 5 rank 0 takes the other machine's warm standbys (waiting for them if their
    # start is slow: join_timeout bounds it)
    policy = (f"train: {{workers: 2, max_workers: 4, batch_size: 16, batch_rule: global, "
              f"max_steps: {steps}, pg_timeout: 60, join_timeout: 240, capacity_every: 0}}\n"
              "policies:\n  - schedule: {5: 4}\n")
    reports = {}
    with NetnsCluster(real, mbit_per_gbs=MBIT_PER_GBS) as cluster:
        for name, alg in (("replanned", "auto"), ("kept", "ring")):
            reports[name] = _job(cluster, folder, f"replan-{name}", policy,
                                 ["--topology", str(topo), "--algorithm", alg],
                                 ["a0", "a1"], ["b0", "b1"], "2:4", timeout=3600)
    after, sync, pred = {}, {}, {}
    for name, r in reports.items():
        (grow,) = [e for e in r["events"] if e["kind"] == "replan" and e["why"] == "resize"]
        tail = [h for h in r["history"] if h["step"] > grow["step"] + 3]
        after[name] = statistics.median(h["step_time"] for h in tail)
        sync[name] = statistics.median(h["comm_time"] for h in tail)
        pred[name] = grow
    g = pred["replanned"]
    figs = [figure("replan/step after 2->4, re-planned", after["replanned"] * 1e3, "ms",
                   better="lower"),
            figure("replan/step after 2->4, old algorithm (ring) kept", after["kept"] * 1e3,
                   "ms", better="lower"),
            figure("replan/gain (kept / re-planned)", after["kept"] / after["replanned"], "x"),
            figure("replan/measured sync after 2->4, re-planned", sync["replanned"] * 1e3, "ms",
                   better="lower"),
            figure("replan/measured sync after 2->4, ring kept", sync["kept"] * 1e3, "ms",
                   better="lower"),
            figure("replan/predicted all-reduce, re-planned", (g["predicted_comm_s"] or 0) * 1e3,
                   "ms", better="lower"),
            figure("replan/predicted all-reduce, ring kept",
                   (g["predicted_comm_kept_s"] or 0) * 1e3, "ms", better="lower"),
            figure("replan/predicted step, re-planned", (g["predicted_step_s"] or 0) * 1e3, "ms",
                   better="lower")]
    return figs, f"re-planned: {g['detail']}"


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
