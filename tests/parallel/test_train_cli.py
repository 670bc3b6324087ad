"""`weft plan show` and `weft train --plan <weft.plan/1>`: bad plans of every kind exit 2 with
`weft: error: <file>: <field>: <problem>` before any rank starts; a good one trains and
writes its run report, locally and under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weft.cli import main

ROOT = Path(__file__).resolve().parents[2]
GPT = str(ROOT / "examples" / "gpt.py")
PLANS = ROOT / "examples" / "plans"
BASE = "format: weft.plan/1\n"
DP = BASE + "mesh: {dp_replicate: -1}\n"
TP = ("tensor_parallel: [{module: 'blocks.*.attn.[qkv]', style: colwise}, "
      "{module: 'blocks.*.attn', divide: [n_head]}]\n")


def test_plan_show_prints_the_mesh_and_each_ranks_pieces(capsys):
    assert main(["plan", "show", str(PLANS / "pp_tp.yaml"), "--model", GPT]) == 0
    out = capsys.readouterr().out
    assert "4 ranks, mesh pp=2 x dp_replicate=1 x dp_shard=1 x tp=2" in out
    assert "tp groups: [0,1] [2,3]" in out and "pp groups: [0,2] [1,3]" in out
    assert "rank 3 (pp=1 dp_replicate=0 dp_shard=0 tp=1, stage(s) [1])" in out
    # q's output rows split over tp; ranks of the second stage hold head, not tok
    rank3 = out.split("rank 3 (")[1]
    q = next(line.split() for line in rank3.splitlines() if "blocks.1.attn.q.weight" in line)
    assert " ".join(q[1:]) == "[64, 64] -> [32, 64] tp colwise dim 0 part 1/2"
    assert "head.weight" in rank3 and "tok.weight" not in rank3
    assert main(["plan", "show", str(PLANS / "fsdp.yaml"), "--model", GPT, "--world", "2",
                 "--brief"]) == 0
    out = capsys.readouterr().out
    assert "fully_shard over 2" in out and "weight" not in out


@pytest.mark.parametrize("argv,message", [
    (["plan", "show", "{dp_tp}", "--model", GPT, "--world", "3"],
     "{dp_tp}: mesh.dp_replicate: -1 cannot be inferred"),
    (["plan", "show", "{dp_tp}", "--model", GPT], "{dp_tp}: mesh: {{'pp': 1, 'dp_replicate': -1"),
    (["plan", "show", "{dp_tp}", "--model", GPT, "--world", "0"], "--world: must be >= 1, got 0"),
    (["plan", "show", "{dp_tp}"], "the following arguments are required: --model"),
])
def test_plan_show_errors(argv, message, capsys):
    dp_tp = str(PLANS / "dp_tp.yaml")
    assert main([a.format(dp_tp=dp_tp) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("weft: error: ") and message.format(dp_tp=dp_tp) in err, err


BAD = [  # (plan text, extra options, the error after "weft: error: <file>: ")
    ("format: weft.plan/9\n", [], "format: unsupported version 'weft.plan/9'"),
    (BASE + "mesh: {cp: 2}\n", [], "mesh: unknown field(s) ['cp']"),
    (BASE + "mesh: {dp_replicate: 3}\n", [],
     "mesh: pp=1 x dp_replicate=3 x dp_shard=1 x tp=1 = 3 ranks, but the world has 4"),
    (BASE + "mesh: {dp_replicate: -1, tp: 2}\n"
     "tensor_parallel: [{module: 'blocks.*.mlp.fc2', style: colwise}]\n", [],
     "tensor_parallel[0].module: 'blocks.*.mlp.fc2' matches no module of GPT"),
    (BASE + "mesh: {tp: -1}\ntensor_parallel: [{module: 'blocks.*.mlp.fc', style: colwise}]\n",
     ["--nproc-per-node", "3"],
     "tensor_parallel[0]: mesh.tp=3 does not divide blocks.0.mlp.fc.out_features=256"),
    (BASE + "mesh: {dp_replicate: 2, tp: 2}\n" + TP.replace("n_head", "n_heads"), [],
     "tensor_parallel[1].divide[0]: module 'blocks.0.attn' has no integer attribute 'n_heads'"),
    (BASE + "mesh: {pp: 2, dp_replicate: 2}\npipeline: {split: [blocks.7]}\n", [],
     "pipeline.split[0]: 'blocks.7' matches no module of GPT"),
    (BASE + "mesh: {pp: 2, dp_replicate: 2}\npipeline: {split: [blocks]}\n", [],
     "pipeline.split[0]: forward never calls 'blocks'"),
    (BASE + "mesh: {pp: 2, dp_replicate: 2}\npipeline: {split: [blocks.1], schedule: pipedream}\n",
     [], "pipeline.schedule: 'pipedream' is not run by weft.parallelize"),
    (BASE + "mesh: {dp_shard: 4}\n", ["--device-memory", "64KiB"],
     "mesh: pp=1 x dp_replicate=1 x dp_shard=4 x tp=1 needs about"),
    (BASE + "mesh: {dp_replicate: 4}\n", ["--global-batch", "6"],
     "--global-batch: 6 does not split into dp=4 (= 4) equal parts"),
    (BASE + "mesh: {pp: 2, dp_replicate: 2}\npipeline: {split: [blocks.1], microbatches: 4}\n",
     ["--global-batch", "12"], "--global-batch: 12 does not split into dp=2 x microbatches=4"),
    ('{"format": "weft.parallel/3"}', [], "format: 'weft.parallel/3' is not a weft plan"),
    (DP, ["--model", "nope.py"], "nope.py does not exist"),
    (DP, ["--model", "{nodata}"], "defines no dataset()"),
    (DP, ["--model", ""], "--model: a weft.plan/1 plan holds no model"),
    (DP, ["--nproc-per-node", "0"], "--nproc-per-node: must be >= 1, got 0"),
    (DP, ["--resume", "{tmp}"], "--resume: {tmp} is not a weft checkpoint folder"),
    (DP, ["--global-batch", "0"], "--global-batch: must be >= 1, got 0"),
    (DP, ["--max-steps", "-2"], "--max-steps: must be >= 1, got -2"),
]


@pytest.mark.parametrize("text,options,message", BAD)
def test_bad_plans_exit_2_before_any_rank_starts(text, options, message, tmp_path, capsys,
                                                 monkeypatch):
    def started(*a, **k):
        raise AssertionError("a rank was started")
    monkeypatch.setattr("weft.launch.launch", started)
    monkeypatch.setattr("weft.launch.run", started)
    nodata = tmp_path / "nodata.py"
    nodata.write_text("from torch import nn\nmodel = nn.Linear(2, 2)\n")
    plan = tmp_path / ("plan.json" if text.startswith("{") else "plan.yaml")
    plan.write_text(text)
    argv = ["train", "--plan", str(plan), "--model", GPT, "--nproc-per-node", "4"]
    argv += [o.format(nodata=nodata, tmp=tmp_path) for o in options]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    message = message.format(tmp=tmp_path)
    if message.startswith(("--global-batch: must", "--max-steps")):  # argparse's typed check
        assert err == f"weft: error: train: {message}", err
    elif message.startswith(("format", "mesh", "tensor_parallel", "pipeline")):
        assert err.startswith(f"weft: error: {plan}: {message}"), err
    else:
        assert err.startswith("weft: error: ") and message in err, err
    assert "\n" not in err  # one line


@pytest.mark.slow
def test_train_writes_a_report_and_a_checkpoint_another_plan_resumes(tmp_path, capfd):
    base = ["train", "--model", GPT, "--nproc-per-node", "2", "--global-batch", "8",
            "--out", str(tmp_path / "runs")]
    assert main(base + ["--plan", str(PLANS / "dp.yaml"), "--max-steps", "3",
                        "--save", str(tmp_path / "ckpt")]) == 0
    out = capfd.readouterr().out  # the bar is drawn by rank 0, a child process
    assert "3/3" in out and "tokens/s" in out and "MiB" in out  # the progress bar
    [first] = (tmp_path / "runs").glob("*/report.json")
    r = json.loads(first.read_text())
    assert r["world"] == 2 and r["steps"] == 3 and len(r["losses"]) == 3
    assert r["tokens_per_step"] == 8 * 32 and r["tokens_per_second"] > 0
    assert len(r["memory_per_rank_bytes"]) == 2 and min(r["memory_per_rank_bytes"]) > 2**20
    assert (first.parent / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # the dp checkpoint continues under a pipelined plan on 2 ranks, at step 4
    assert main(base + ["--plan", str(PLANS / "pp.yaml"), "--max-steps", "2", "--quiet",
                        "--resume", str(tmp_path / "ckpt")]) == 0
    out = capfd.readouterr().out
    assert "━" not in out and "2 steps of 8 on 2 ranks" in out  # no bar; the summary
    [second] = [p for p in (tmp_path / "runs").glob("*/report.json") if p != first]
    r2 = json.loads(second.read_text())
    assert r2["first_step"] == 3 and r2["steps"] == 2 and r2["plan_data"]["mesh"]["pp"] == 2
    assert r2["losses"][0] < r["losses"][0]  # it did not start from scratch


@pytest.mark.slow
def test_train_under_torchrun_unchanged(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "weft.cli", "train", "--plan", str(PLANS / "fsdp.yaml"), "--model", GPT,
         "--max-steps", "2", "--global-batch", "8", "--quiet", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    [report] = tmp_path.glob("*/report.json")  # written once, by rank 0
    r = json.loads(report.read_text())
    assert r["world"] == 2 and r["steps"] == 2 and r["plan_data"]["mesh"]["dp_shard"] == 2
