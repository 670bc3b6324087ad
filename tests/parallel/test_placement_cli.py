"""`weft train --plan` checks a plan's `placement` against the devices the ranks will name
($WEFT_DEVICE) in the parent: `weft: error: <file>: placement: ...`, exit 2, no rank started;
a consistent one reaches the launcher. Locally and as one torchrun worker (no process
is started: the launcher is replaced by a recorder)."""

import socket
from pathlib import Path

import pytest

from weft.cli import main

ROOT = Path(__file__).resolve().parents[2]
GPT = str(ROOT / "examples" / "gpt.py")
DP = "format: weft.plan/1\nmesh: {dp_replicate: -1}\n"
TORCHRUN = {"RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "4",
            "GROUP_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
HOST = socket.gethostname().split(".")[0]
NODES = {**TORCHRUN, "GROUP_WORLD_SIZE": "2"}  # as torchrun sets it for 2 nodes


@pytest.fixture
def started(monkeypatch):
    """The launchers, replaced: each call is recorded and ends the command (exit 3)."""
    calls = []

    class Started(Exception):
        pass

    def record(*a, **k):
        calls.append(a)
        raise Started

    monkeypatch.setattr("weft.launch.launch", record)
    monkeypatch.setattr("weft.launch.run", record)
    for k in ("WEFT_DEVICE", *NODES, "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    return calls, Started


def _train(tmp_path, placement, world, env, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plan = tmp_path / "plan.yaml"
    plan.write_text(DP + f"placement: {placement}\n")
    argv = ["train", "--plan", str(plan), "--model", GPT, "--global-batch", "8", "--quiet"]
    if "RANK" not in env:
        argv += ["--nproc-per-node", str(world)]
    return plan, argv


BAD = [  # (placement, world, environment, error after "weft: error: <file>: placement: ")
    ("[d0, d9]", 2, {"WEFT_DEVICE": "d{rank}"},
     ("$WEFT_DEVICE='d{rank}' puts rank 1 on 'd1', which is not in the plan's placement "
      "['d0', 'd9']")),
    ("[n0, n1]", 2, {"WEFT_DEVICE": "n0"},
     "$WEFT_DEVICE='n0' puts ranks 0 and 1 both on 'n0'; each rank needs its own device"),
    ("[n0, n1]", 2, {"WEFT_DEVICE": "n{nodes}"},
     "$WEFT_DEVICE='n{nodes}': unknown or malformed field 'nodes'"),
    ("[d0, d0]", 2, {}, "device(s) ['d0'] are given to more than one rank"),
    ("[d0, d1, d2]", 2, {}, "3 devices for a mesh of 2 ranks"),
    # one torchrun worker (global rank 3, local rank 1 of node 1) knows its node's two
    ("[n0.gpu0, n0.gpu1, n1.gpu0, n2.gpu1]", 4,
     {**TORCHRUN, "WEFT_DEVICE": "n{node}.gpu{local_rank}"},
     "$WEFT_DEVICE='n{node}.gpu{local_rank}' puts rank 3 on 'n1.gpu1', which is not in"),
    ("[h0, h1, h2, h3]", 4, {**TORCHRUN, "WEFT_DEVICE": "h{node}"},
     "$WEFT_DEVICE='h{node}' puts ranks 2 and 3 both on 'h1'"),
    # two nodes alike (torchrun's GROUP_WORLD_SIZE): the other node's workers are known too,
    # and a template that does not name the node puts both nodes' on the same devices
    ("[gpu0, gpu1, gpu2, gpu3]", 4, {**NODES, "WEFT_DEVICE": "gpu{local_rank}"},
     "$WEFT_DEVICE='gpu{local_rank}' puts ranks 0 and 2 both on 'gpu0'; each rank needs its "
     "own device of the placement (they run on nodes 0 and 1: name the node with {node} or "
     "{host})"),
    ("[n0.gpu0, n0.gpu1, n1.gpu0, n2.gpu1]", 4,
     {**NODES, "WEFT_DEVICE": "n{node}.gpu{local_rank}"},
     "$WEFT_DEVICE='n{node}.gpu{local_rank}' puts rank 3 on 'n1.gpu1', which is not in"),
]


@pytest.mark.parametrize("placement,world,env,message", BAD)
def test_inconsistent_placement_exits_2_before_any_rank_starts(placement, world, env, message,
                                                               tmp_path, capsys, monkeypatch,
                                                               started):
    calls, _ = started
    plan, argv = _train(tmp_path, placement, world, env, monkeypatch)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"weft: error: {plan}: placement: {message}"), err
    assert "\n" not in err
    assert calls == []  # nothing ran


@pytest.mark.parametrize("placement,world,env", [
    ("[d1, d0]", 2, {"WEFT_DEVICE": "d{rank}"}),          # a permutation: the ranks renumber
    ("[a, b]", 2, {}),                                     # no $WEFT_DEVICE: rank order
    ("[n1.gpu1, n0.gpu0, n1.gpu0, n0.gpu1]", 4,
     {**TORCHRUN, "WEFT_DEVICE": "n{node}.gpu{local_rank}"}),
    ("[n1.gpu1, n0.gpu0, n1.gpu0, n0.gpu1]", 4,
     {**NODES, "WEFT_DEVICE": "n{node}.gpu{local_rank}"}),
    # {host}: only this node knows its name, so only its own workers are checked here
    (f"[other.gpu0, other.gpu1, {HOST}.gpu0, {HOST}.gpu1]", 4,
     {**NODES, "WEFT_DEVICE": "{host}.gpu{local_rank}"}),
])
def test_consistent_placement_reaches_the_launcher(placement, world, env, tmp_path, monkeypatch,
                                                   started):
    calls, Started = started
    _, argv = _train(tmp_path, placement, world, env, monkeypatch)
    with pytest.raises(Started):
        main(argv)
    assert len(calls) == 1
