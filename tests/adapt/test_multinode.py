"""Elastic training across "machines": a second node agent (its own process, reaching the job's
store over TCP like a remote machine) joins mid-run, the policy scales out onto it without
restarting anyone, then that whole node is SIGKILLed and the survivors finish."""

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from weft.adapt.agent import Nodes, parse_endpoint, parse_nnodes
from weft.adapt.config import AdaptConfig
from weft.adapt.host import run_elastic
from weft.adapt.policy import Compose, FollowCapacity, Policy
from weft.errors import LaunchError

SRC = Path(__file__).resolve().parents[2] / "src"


class Pace(Policy):
    """Test pacing only: slow steps until the failure (bounded by max_steps), so the second
    node's standbys get warm and the test can kill that node while it trains."""

    def on_step(self, metrics, ctx):
        if ctx.membership == 0:  # until node 2 is in: up to 50 s (its start is slow under load)
            time.sleep(0.1)
        elif ctx.world != 2:
            time.sleep(0.03)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_key(store, key: str, timeout: float) -> None:
    store.wait([key], datetime.timedelta(seconds=timeout))


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state


@pytest.mark.slow
def test_node_joins_scale_out_then_whole_node_dies(tmp_path):
    port = _free_port()
    cfg = AdaptConfig(workers=2, max_workers=4, epochs=30, max_steps=500, hidden=32,
                      pg_timeout=8)
    nodes = Nodes(1, 2, nproc_per_node=2, endpoint=("127.0.0.1", port))
    result: dict = {}

    def host():
        try:
            result["out"] = run_elastic(cfg, Compose([FollowCapacity(patience=2), Pace()]),
                                        timeout=240, nodes=nodes)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = exc

    t = threading.Thread(target=host, daemon=True)
    t.start()
    policy = tmp_path / "p.yaml"
    policy.write_text("policies: []\n")  # a joining machine uses the host's job, not its own
    # The policy object travels pickled: its class (Pace, here) must be importable there too,
    # by the module name pytest gave this file (e.g. adapt.test_multinode).
    tests_root = Path(__file__).resolve().parents[Pace.__module__.count(".")]
    path = os.pathsep.join([str(SRC), str(tests_root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    node2 = subprocess.Popen([sys.executable, "-m", "weft.cli", "train", "--policy", str(policy),
                              "--nnodes", "1:2", "--nproc-per-node", "2",
                              "--rdzv-endpoint", f"127.0.0.1:{port}"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        store = None
        for _ in range(100):
            try:
                store = dist.TCPStore("127.0.0.1", port, is_master=False,
                                      timeout=datetime.timedelta(seconds=5))
                break
            except Exception:  # noqa: BLE001 - host not up yet
                time.sleep(0.1)
        assert store is not None
        epoch, deadline = 0, time.monotonic() + 120

        def members(e: int) -> list:
            try:
                return json.loads(store.get(f"members/{e}"))
            except Exception:  # noqa: BLE001 - the host ended: reported below
                return []

        while len(members(epoch)) < 4:  # scale out onto node 2
            if time.monotonic() > deadline or not t.is_alive():
                node2.kill()
                raise AssertionError(f"no scale-out to 4; host: {str(result)[:500]}; node 2:\n"
                                     f"{node2.communicate(timeout=30)[0].decode()[-3000:]}")
            if t.is_alive() and store.check([f"members/{epoch + 1}"]):
                epoch += 1
            time.sleep(0.02)
        four = members(epoch)
        node2.send_signal(signal.SIGKILL)  # the whole machine is lost (its agent and workers)
        node2.wait(timeout=30)
        t.join(timeout=240)
    finally:
        if node2.poll() is None:
            node2.kill()
    assert not t.is_alive(), "the host did not finish"
    if "error" in result:
        raise result["error"]
    out = result["out"]
    reports, pids = out["reports"], out["pids"]
    joiners = [w for w in four if w not in (0, 1)]
    for w in joiners:  # node 2's workers died with their agent and never reported
        assert w not in reports
        assert _gone(pids[w])
    for wid in (0, 1):
        r = reports[wid]
        seq = [(m["world"], m["why"]) for m in r["memberships"]]
        # 2 -> (3 ->) 4 as node 2's slots became warm, then back to 2 when node 2 died.
        assert seq[0] == (2, "start") and seq[-1] == (2, "failure") and seq[-2] == (4, "resize")
        assert all(why == "resize" for _, why in seq[1:-1])
        assert {m["pid"] for m in r["memberships"]} == {pids[wid]} == {r["pid_end"]}
        (fail,) = [e for e in r["events"] if e["kind"] == "failure"]
        assert sorted(fail["lost"]) == sorted(joiners)
        assert r["step"] == 500
    assert torch.equal(reports[0]["params"], reports[1]["params"])
    assert reports[0]["accuracy"] > 0.9


def test_cli_node_options_are_checked():
    assert parse_nnodes("1:3") == (1, 3) and parse_nnodes("2") == (2, 2)
    assert parse_endpoint("node1:29400") == ("node1", 29400)
    with pytest.raises(LaunchError, match="MIN:MAX"):
        parse_nnodes("a:b")
    with pytest.raises(LaunchError, match="1 <= MIN <= MAX"):
        Nodes(3, 2)
    with pytest.raises(LaunchError, match="HOST:PORT"):
        parse_endpoint("host:port")


def test_a_node_beyond_max_nodes_is_refused():
    from weft.adapt.agent import NodeAgent, open_store
    from weft.adapt.host import publish_job

    cfg = AdaptConfig(workers=1, max_workers=1)
    store, is_host = open_store(None, 5.0)
    assert is_host
    publish_job(store, cfg, None, Nodes(1, 1))
    NodeAgent(store, "127.0.0.1", store.port, 1)  # the one node the job may have
    with pytest.raises(LaunchError, match="maximum of 1 node"):
        NodeAgent(store, "127.0.0.1", store.port, 1)
