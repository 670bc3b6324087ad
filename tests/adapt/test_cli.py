"""`weft train --policy`: command-line errors, the run folder it writes, and the loss plot."""

import json
from pathlib import Path

import pytest

from weft.adapt.report import merge, plot_run
from weft.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"


def test_bad_policy_file_is_a_clear_cli_error(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text("rules:\n  - when: 'step > 3'\n    do: {teleport: 1}\n")
    assert main(["train", "--policy", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "weft: error:" in err and "p.yaml" in err and "unknown action 'teleport'" in err
    assert main(["train", "--policy", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: policy file not found" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {workers: 0}\n")
    assert main(["train", "--policy", str(cfg), "--out", str(tmp_path / "runs")]) == 2
    assert "workers=0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing written for a job that never ran


def test_weft_adapt_is_gone_one_route_per_command(capsys):
    # `weft adapt train` / `weft adapt demo` duplicated `weft train --policy` / `weft demo
    # --adaptive`; only the latter remain.
    assert main(["adapt", "train", "--policy", "p.yaml"]) == 2
    assert "invalid choice: 'adapt'" in capsys.readouterr().err


def test_train_policy_writes_its_outputs_in_a_run_folder(tmp_path, monkeypatch, capfd):
    # issue 14, item 5: the loss plot used to land in the current directory (adapt_loss.png).
    policy = tmp_path / "p.yaml"
    policy.write_text("train: {workers: 1, max_workers: 1, epochs: 1, max_steps: 6, hidden: 16}\n"
                      "policies: []\n")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", "--policy", str(policy), "--out", str(tmp_path / "runs")]) == 0
    assert list(work.iterdir()) == []
    [run] = (tmp_path / "runs").iterdir()
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 6 and len(report["history"]) == 6
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capfd.readouterr().out
    assert f"{run}/report.json" in out
    # issue 14, item 5: training printed nothing until the end; rank 0 now shows progress
    assert "step 1  epoch 0  loss " in out and "1 worker" in out
    assert main(["train", "--policy", str(policy), "--out", str(tmp_path / "q"), "--quiet"]) == 0
    assert "step 1  epoch 0" not in capfd.readouterr().out


def test_merge_and_plot(tmp_path):
    h = [{"step": s, "loss": 2.0 / s, "world": 2 if s < 5 else 4} for s in range(1, 10)]
    ev = {"step": 5, "kind": "resize", "detail": "2 -> 4 workers"}
    reports = {0: {"wid": 0, "rank": 0, "history": h, "events": [ev]},
               1: {"wid": 1, "rank": 1, "history": h[2:], "events": [ev]}}
    history, events = merge(reports)
    assert [x["step"] for x in history] == list(range(1, 10)) and events == [ev]
    out = plot_run(history, events, tmp_path / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_node_options_are_clear_cli_errors(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text("policies: []\n")
    cases = [(["--nnodes", "1:2"], "needs --rdzv-endpoint HOST:PORT"),
             (["--nnodes", "x"], "expected N or MIN:MAX"),
             (["--nnodes", "3:2", "--rdzv-endpoint", "127.0.0.1:1"], "1 <= MIN <= MAX"),
             (["--rdzv-endpoint", "127.0.0.1:abc"], "expected HOST:PORT")]
    for extra, msg in cases:
        assert main(["train", "--policy", str(policy), *extra]) == 2
        assert msg in capsys.readouterr().err


NET = '''
import torch
from torch import nn


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def dataset():
    x = torch.randn(96, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x[:32], y[:32])


loss_fn = nn.functional.cross_entropy


def optimizer(params):
    return torch.optim.Adam(params, lr=0.01)


def scheduler(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
'''

SCRIPT = '''
import net
import weft.adapt as wa

if __name__ == "__main__":
    wa.fit(net.model, net.dataset, net.loss_fn, net.optimizer, scheduler=net.scheduler,
           config={"workers": 1, "max_workers": 1, "max_steps": 5, "batch_size": 8})
'''


def test_train_a_model_spec_and_a_script(tmp_path, capsys):
    import torch

    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "train.py").write_text(SCRIPT)
    policy = tmp_path / "p.yaml"
    policy.write_text("train: {workers: 1, max_workers: 1, max_steps: 4, batch_size: 8}\n")
    assert main(["train", "--policy", str(policy), "--model", str(tmp_path / "net.py"),
                 "--out", str(tmp_path / "a")]) == 0
    [run] = (tmp_path / "a").iterdir()
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 4 and report["test_loss"] > 0
    assert [h["lr"] for h in report["history"]] == [0.01, 0.005, 0.005, 0.0025]  # StepLR ran
    state = torch.load(run / "model.pt")
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    # the script's fit() takes the policy file's settings and the command line's options
    assert main(["train", "--policy", str(policy), "--script", str(tmp_path / "train.py"),
                 "--max-steps", "2", "--out", str(tmp_path / "b")]) == 0
    [run] = (tmp_path / "b").iterdir()
    assert json.loads((run / "report.json").read_text())["steps"] == 2
    assert "trained model:" in capsys.readouterr().out


def test_bad_adaptive_training_options_are_clear_cli_errors(tmp_path, capsys):
    policy = tmp_path / "p.yaml"
    policy.write_text("policies: []\n")
    (tmp_path / "nodata.py").write_text("import torch\nmodel = torch.nn.Linear(2, 2)\n")
    cases = [(["--data", "d.py:fn"], "--data and --parallel-plan need --model"),
             (["--script", str(tmp_path / "missing.py")], "--script: " + str(tmp_path)),
             (["--resume", str(tmp_path / "none")], "nothing to resume from"),
             (["--resume", str(tmp_path / "c1"), "--checkpoint", str(tmp_path / "c2")],
              "pass one of them"),
             (["--workers", "0"], "--workers: must be >= 1, got 0"),
             (["--rdzv-timeout", "-1"], "--rdzv-timeout: must be > 0"),
             (["--model", str(tmp_path / "nodata.py")], "defines no dataset()"),
             (["--batch-rule", "global", "--algorithm", "spiral"], "unknown algorithm 'spiral'")]
    for extra, msg in cases:
        assert main(["train", "--policy", str(policy), "--out", str(tmp_path / "r"),
                     *extra]) == 2, extra
        assert msg in capsys.readouterr().err, extra
    assert not (tmp_path / "r").exists()


PACED = NET + '''

import os
import time


def loss_fn(out, y):  # PACE seconds per step (the test's clock: it kills the job mid-run)
    time.sleep(float(os.environ.get("PACE", "0")))
    return nn.functional.cross_entropy(out, y)
'''


def _gone(pgid: int, timeout: float) -> bool:
    """Every process of the process group `pgid` (the job and what it started) has exited."""
    import os
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


@pytest.mark.slow
def test_train_policy_resumes_after_the_store_host_is_lost(tmp_path):
    """`weft train --policy` end to end: the job's host (the process that holds the c10d
    store and starts the workers) is SIGKILLed mid-run; everything dies with it, and the
    last complete checkpoint is resumed by 3 workers instead of 2 (`--resume`), which
    finish on the parameters of an unresized single process (1e-5)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from weft.adapt import durable
    from weft.adapt.sharding import EpochSharder
    from weft.model_spec import load_module

    (tmp_path / "net.py").write_text(PACED)
    policy = tmp_path / "p.yaml"
    policy.write_text("policies: []\n")
    ckpt, steps, glob = tmp_path / "ckpt", 16, 12  # 96 samples: 8 steps an epoch
    env = {**os.environ, "PYTHONPATH": str(SRC), "PACE": "0.25"}
    common = [sys.executable, "-m", "weft", "train", "--policy", str(policy), "--model",
              str(tmp_path / "net.py"), "--batch-rule", "global", "--max-steps", str(steps),
              "--quiet"]
    first = subprocess.Popen(common + ["--workers", "2", "--max-workers", "2", "--batch-size",
                                       "6", "--checkpoint", str(ckpt), "--checkpoint-every",
                                       "3", "--out", str(tmp_path / "runs1")],
                             env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (durable.exists(ckpt) and durable.meta(ckpt)["step"] >= 6):
            assert first.poll() is None, "the first job ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint of step >= 6 within 240 s"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)  # the store's host: workers die with it
        first.wait(30)
        assert _gone(first.pid, 30), "a process of the killed job is still running"
    finally:
        if not _gone(first.pid, 0):  # (a failed test leaves nothing running)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
    saved = durable.meta(ckpt)
    assert 6 <= saved["step"] < steps and saved["world"] == 2
    assert not (tmp_path / "runs1").exists()  # no report: the job never finished

    env["PACE"] = "0"
    done = subprocess.run(common + ["--workers", "3", "--max-workers", "3", "--batch-size", "4",
                                    "--resume", str(ckpt), "--out", str(tmp_path / "runs2")],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = (tmp_path / "runs2").iterdir()
    report = json.loads((run / "report.json").read_text())
    (resumed,) = [e for e in report["events"] if e["kind"] == "resume"]
    assert resumed["step"] == saved["step"] and "written by 2 worker(s), now 3" in resumed["detail"]
    hist = report["history"]
    assert [h["step"] for h in hist] == list(range(saved["step"] + 1, steps + 1))
    assert {h["world"] for h in hist} == {3} and {h["global_batch"] for h in hist} == {glob}
    # the resumed steps read on from where the checkpoint was: no sample lost or repeated
    assert [tuple(h["at"]) for h in hist] == [divmod(s * glob, 96)
                                              for s in range(saved["step"], steps)]
    assert durable.meta(ckpt)["step"] == steps  # and it went on checkpointing there
    # the same parameters as one process that trained the same global batches, unkilled
    net, _ = load_module(str(tmp_path / "net.py"))
    model, (data, _) = net.model(), net.dataset()
    opt = net.optimizer(model.parameters())
    sched = net.scheduler(opt)
    order = EpochSharder(len(data), 0)
    for s in range(steps):
        epoch, at = divmod(s * glob, len(data))
        idx = order.permutation(epoch)[at:at + glob]
        opt.zero_grad()
        x, y = data[idx]
        nn_loss = torch.nn.functional.cross_entropy(model(x), y)
        nn_loss.backward()
        opt.step()
        sched.step()
    trained = torch.load(run / "model.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(trained[k], v, rtol=0, atol=1e-5, msg=k)
