"""`weft adapt` command-line errors and the loss plot (no training processes)."""

from weft.adapt.report import merge, plot_run
from weft.cli import main


def test_bad_policy_file_is_a_clear_cli_error(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text("rules:\n  - when: 'step > 3'\n    do: {teleport: 1}\n")
    assert main(["adapt", "train", "--policy", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "weft: error:" in err and "p.yaml" in err and "unknown action 'teleport'" in err
    assert main(["adapt", "train", "--policy", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {workers: 0}\n")
    assert main(["adapt", "train", "--policy", str(cfg)]) == 2
    assert "workers=0" in capsys.readouterr().err


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
