"""`weft serve decompose` and `weft serve run`: end to end, and a named error for bad input."""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from torch import nn

from weft.cli import main
from weft.serve import Bundle
from weft.serve import testbed as tb


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_sets):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    torch.save(tb.digits_resnet(width=4).eval(), d / "model.pt")
    (xtr, ytr), (xte, yte) = (s.tensors for s in digits_sets)
    torch.save({"x": xtr, "y": ytr, "x_test": xte, "y_test": yte}, d / "data.pt")
    return d


def test_decompose_writes_a_bundle_and_prints_sizes(files, capsys):
    out = files / "bundle"
    rc = main(["serve", "decompose", str(files / "model.pt"), "--data", str(files / "data.pt"),
               "--out", str(out), "--groups", "2", "--steps", "5", "--keep", "0.5"])
    text = capsys.readouterr().out
    assert rc == 0, text
    b = Bundle.load(out)
    assert len(b.members) == 2 and b.provenance["source"]["data"] == str(files / "data.pt")
    assert "2 subnets written" in text and "held-out accuracy (360 samples)" in text
    for m in b.members:
        assert f"{m.info['params']:,}" in text


def test_decompose_reads_a_data_function(files, capsys):
    rc = main(["serve", "decompose", str(files / "model.pt"), "--data", "weft.serve.testbed:digits",
               "--out", str(files / "b2"), "--groups", "5", "--steps", "0", "--criterion", "magnitude"])
    assert rc == 0, capsys.readouterr()
    assert len(Bundle.load(files / "b2").members) == 5


def _setup_bad(files):
    torch.save(tb.digits_resnet(width=4).state_dict(), files / "weights.pt")
    torch.save(nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU()), files / "conv.pt")
    torch.save({"x": torch.zeros(3, 1, 8, 8)}, files / "nolabels.pt")
    (files / "plain").mkdir(exist_ok=True)
    (files / "plain" / "keep.txt").write_text("mine")


@pytest.mark.parametrize("args, message", [
    (["--groups", "11"], "groups=11: must be between 1 and the model's 10 classes"),
    (["--keep", "0"], r"--keep: must be in \(0, 1\], got 0"),
    (["--keep", "1.5"], r"--keep: must be in \(0, 1\], got 1.5"),
    (["--model", "weights.pt"], r"weights.pt: holds a (dict|OrderedDict), not an nn.Module"),
    (["--model", "conv.pt"], "not a classifier"),
    (["--model", "missing.pt"], "missing.pt: no such model file"),
    (["--data", "nolabels.pt"], "expected a dict with tensors 'x' and 'y'"),
    (["--data", "nope"], "--data nope: no such file, and not MODULE:FUNCTION"),
    (["--data", "weft.serve.testbed:nothing"], "--data weft.serve.testbed:nothing: AttributeError"),
    (["--out", "plain"], "exists and is not a weft bundle"),
])
def test_decompose_errors_are_named(files, capsys, args, message):
    _setup_bad(files)
    opts = {"--model": "model.pt", "--data": "data.pt", "--out": "bad_out"}
    extra = []
    for i in range(0, len(args), 2):
        if args[i] in opts:
            opts[args[i]] = args[i + 1]
        else:
            extra += args[i:i + 2]
    argv = ["serve", "decompose", str(files / opts["--model"]), "--data",
            opts["--data"] if ":" in opts["--data"] or opts["--data"] == "nope" else str(files / opts["--data"]),
            "--out", str(files / opts["--out"]), "--steps", "0", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("weft: error: ")
    assert re.search(message, err), err
    assert not (files / "bad_out").exists()
    assert (files / "plain" / "keep.txt").read_text() == "mine"


def test_run_errors_are_named(tiny_bundle, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "none")], "serving a model file needs --input-shape"),
        ([str(tmp_path / "none.pt"), "--input-shape", "1,8,8"], "none.pt: no such model file"),
        ([str(tmp_path / "none.pt"), "--input-shape", "1,x"], "--input-shape '1,x': expected integers"),
        ([str(tiny_bundle.path), "--workers", "5"], "workers=5: must be between 1 and the bundle's 3 subnets"),
        ([str(tiny_bundle.path), "--queue", "0"], "--queue: must be >= 1, got 0"),
        ([str(tiny_bundle.path), "--port", "70000"], "--port: must be a port in 0..65535, got 70000"),
    ]
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle.path, broken)
    (broken / "bundle.json").write_text("{")
    cases.append(([str(broken)], "bundle.json: not valid JSON"))
    for args, message in cases:
        assert main(["serve", "run", *args, "--port", "0"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("weft: error: ") and message in err, (args, err)


def _readline(proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            return proc.stdout.readline()
        if proc.poll() is not None:
            break
    raise AssertionError(f"no output within {timeout} s; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.mark.slow
@pytest.mark.timeout(900)  # seconds on a quiet machine; starting 3 processes on a loaded one took minutes
@pytest.mark.parametrize("mode", ["bundle-workers", "model-in-process"])
def test_run_serves_until_sigterm(tiny_bundle, files, digits_sets, mode):
    if mode == "bundle-workers":
        args = [str(tiny_bundle.path), "--workers", "2", "--threads", "1"]
    else:
        args = [str(files / "model.pt"), "--input-shape", "1,8,8", "--in-process"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "weft.cli", "serve", "run", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = _readline(proc, 600)
        assert line.startswith("serving"), line
        url = line.split(" at ")[1].split()[0]
        x = digits_sets[1].tensors[0][:3]
        req = urllib.request.Request(url + "/predict", data=json.dumps({"inputs": x.tolist()}).encode())
        body = json.loads(urllib.request.urlopen(req, timeout=120).read())
        assert len(body["labels"]) == 3
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip().endswith("stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
