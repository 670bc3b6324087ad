"""Parts 3 and 4 of benchmarks/adapt.py, on an emulated cluster (network namespaces, root):
time to accuracy with a congested rail, and the gain of re-planning after a resize. See the
docstring of benchmarks/adapt.py for what each measures."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import figure

ROOT = Path(__file__).resolve().parents[1]
GPT_SPEC = str(ROOT / "examples" / "gpt_spec.py")

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
