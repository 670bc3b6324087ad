"""`weft train --policy`: command-line errors, the run folder it writes, and the loss plot."""

import json


from weft.adapt.report import merge, plot_run
from weft.cli import main


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
