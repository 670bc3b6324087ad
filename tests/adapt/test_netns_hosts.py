"""Elastic training across emulated machines: two network namespaces joined by one shaped
link (addresses 10.213.0.x, no loopback between them), each running `weft train --nnodes 2`
as a separate machine would. The second host's worker SIGKILLs itself mid-run; the worker
on the first host (which also holds the job's store) detects it over the link, goes on
alone and finishes. Needs root (skipped otherwise)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weft.collectives.emulate.netns import NetnsCluster, available
from weft.collectives.emulate.shapes import two_node

ROOT = Path(__file__).resolve().parents[2]
STEPS = 16


@pytest.mark.slow
@pytest.mark.netns
def test_two_hosts_train_over_the_link_and_survive_a_lost_worker(tmp_path):
    ok, why = available()
    if not ok:
        pytest.skip(why)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"train: {{workers: 2, max_workers: 2, batch_size: 16, hidden: 32, "
                      f"max_steps: {STEPS}, kill: [6, 1], pg_timeout: 6, join_timeout: 120, "
                      f"standby: 0}}\npolicies: []\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    procs, logs = {}, {}
    with NetnsCluster(two_node(1), mbit_per_gbs=40.0) as cluster:
        store = f"{cluster.addr['a0']}:29613"
        try:
            for dev in ("a0", "b0"):  # the first registered node is node 1: worker 0
                cmd = ["ip", "netns", "exec", cluster.ns[dev], sys.executable, "-m", "weft.cli",
                       "train", "--policy", str(policy), "--nnodes", "2", "--nproc-per-node",
                       "1", "--rdzv-endpoint", store, "--out", str(tmp_path / "runs"),
                       "--devices", dev]
                logs[dev] = open(tmp_path / f"{dev}.log", "w")
                procs[dev] = subprocess.Popen(
                    cmd, env=dict(env, GLOO_SOCKET_IFNAME=cluster._ifname(dev, "b0" if dev == "a0"
                                                                          else "a0")),
                    stdout=logs[dev], stderr=subprocess.STDOUT, start_new_session=True)
                time.sleep(1.0 if dev == "a0" else 0.0)  # the store's host first
            for dev, p in procs.items():
                p.wait(timeout=300)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    os.killpg(p.pid, 9)
                    p.wait(timeout=10)
            for f in logs.values():
                f.close()
    text = {d: (tmp_path / f"{d}.log").read_text() for d in procs}
    assert procs["a0"].returncode == 0, text["a0"]
    assert "joined the job" in text["b0"], text["b0"]
    (report,) = (tmp_path / "runs").glob("*/report.json")
    r = json.loads(report.read_text())
    assert r["steps"] == STEPS and r["workers_final"] == 1
    assert r["dead_workers"] == [1]
    (fail,) = [e for e in r["events"] if e["kind"] == "failure"]
    assert fail["lost"] == [1] and fail["new"] == 1
    # both hosts trained together before the loss: world 2 over the link, then 1
    worlds = [h["world"] for h in r["history"]]
    assert worlds[0] == 2 and worlds[-1] == 1
    assert r["workers"]["0"]["memberships"][0]["world"] == 2
