"""The launcher: results by rank, failures surface with the traceback, no orphans."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from weft.errors import LaunchError
from weft.launch import launch


def _sum_ranks():
    t = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(t)
    return dist.get_rank(), dist.get_world_size(), float(t)


def test_results_by_rank():
    out = launch(_sum_ranks, 3, timeout=30)
    assert out == [(r, 3, 3.0) for r in range(3)]


def _speak(tag):
    print(f"rank {dist.get_rank()} says {tag}", flush=True)
    print(f"rank {dist.get_rank()} warns {tag}", file=sys.stderr, flush=True)
    return os.environ.get("WEFT_TEST_VAR"), os.getcwd(), os.getppid()


def test_ranks_see_the_parents_environment_cwd_and_output_as_they_are_now(capfd, monkeypatch, tmp_path):
    # Ranks come from a forkserver started by an earlier launch, with the environment,
    # working folder and stdout of that moment; each rank must still get the parent's
    # current ones, as a spawned process would.
    launch(_sum_ranks, 1, timeout=30)
    capfd.readouterr()
    monkeypatch.setenv("WEFT_TEST_VAR", "now")
    monkeypatch.chdir(tmp_path)
    out = launch(_speak, 2, args=("hello",), timeout=30)
    assert [o[:2] for o in out] == [("now", str(tmp_path))] * 2
    got = capfd.readouterr()
    # both ranks write to the same file at once: their lines may interleave
    assert "rank 0 says hello" in got.out and "rank 1 says hello" in got.out
    assert "rank 1 warns hello" in got.err
    monkeypatch.delenv("WEFT_TEST_VAR")
    assert [o[0] for o in launch(_speak, 1, args=("again",), timeout=30)] == [None]
    assert "rank 0 says again" in capfd.readouterr().out


def test_start_method_can_be_spawn(monkeypatch):
    monkeypatch.setenv("WEFT_START_METHOD", "spawn")
    [(_, _, parent)] = launch(_speak, 1, args=("spawned",), timeout=60)
    assert parent == os.getpid()              # spawned by this process, not a forkserver
    monkeypatch.setenv("WEFT_START_METHOD", "fork")
    with pytest.raises(LaunchError, match="WEFT_START_METHOD must be forkserver or spawn"):
        launch(_speak, 1, args=("x",))


def _fail_one(pid_dir):
    Path(pid_dir, str(dist.get_rank())).write_text(str(os.getpid()))
    if dist.get_rank() == 1:
        raise ValueError("rank one is broken on purpose")
    time.sleep(600)  # the others hang: the launcher must stop them


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check its state (the process may be reaped between
    # the two: its /proc entry then vanishes while being read)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _pids(d: Path) -> list[int]:
    return [int(p.read_text()) for p in d.iterdir()]


def test_failure_surfaces_traceback_and_leaves_no_child(tmp_path):
    with pytest.raises(LaunchError) as err:
        launch(_fail_one, 3, args=(str(tmp_path),), timeout=30)
    msg = str(err.value)
    assert err.value.rank == 1
    assert "rank 1 of 3 failed" in msg and "rank one is broken on purpose" in msg
    assert "Traceback" in msg and "_fail_one" in msg
    pids = _pids(tmp_path)
    assert len(pids) == 3
    assert not any(_alive(p) for p in pids)


def _killed():
    if dist.get_rank() == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)


def test_killed_rank_is_reported():
    with pytest.raises(LaunchError, match="rank 0 of 2 was killed by signal 9"):
        launch(_killed, 2, timeout=30)


_PARENT = textwrap.dedent("""
    import sys, os, time
    sys.path.insert(0, {tests!r})
    from test_launch import _sleep_forever
    from weft.launch import launch
    launch(_sleep_forever, 2, args=({d!r},), timeout=30)
""")


def _sleep_forever(pid_dir):
    Path(pid_dir, str(dist.get_rank())).write_text(str(os.getpid()))
    time.sleep(600)


def _start_parent(tmp_path):
    code = _PARENT.format(tests=str(Path(__file__).parent), d=str(tmp_path))
    # as from a terminal: SIGINT at its default in the child (an ignored SIGINT is
    # inherited through exec, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    end = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2:
        assert time.monotonic() < end and proc.poll() is None, "ranks never started"
        time.sleep(0.1)
    return proc, _pids(tmp_path)


def _wait_dead(pids, seconds=15):
    end = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_ctrl_c_stops_every_rank(tmp_path):
    proc, pids = _start_parent(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert proc.wait(timeout=30) != 0
    assert _wait_dead(pids) == []


def test_parent_killed_takes_ranks_with_it(tmp_path):
    proc, pids = _start_parent(tmp_path)
    proc.kill()  # SIGKILL: no cleanup code runs in the parent
    proc.wait(timeout=10)
    leftover = _wait_dead(pids)
    for p in leftover:  # do not leave them behind even if the test fails
        os.kill(p, signal.SIGKILL)
    assert leftover == []


def test_same_script_runs_under_torchrun():
    """examples/train_digits.py, unchanged, under torchrun with c10d rendezvous."""
    root = Path(__file__).resolve().parents[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = ([str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"])
    r = subprocess.run(cmd + ["--nproc-per-node=2", "--rdzv-backend=c10d",
                              "--rdzv-endpoint=127.0.0.1:0", str(root / "examples/train_digits.py")],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    acc = float(r.stdout.split("test accuracy")[1].split("%")[0])
    assert acc >= 95.0
