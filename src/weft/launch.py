"""Run a function on N ranks: spawned local processes, or unchanged under torchrun.

    import weft.launch

    def main(epochs):
        rank = torch.distributed.get_rank()
        ...

    if __name__ == "__main__":
        weft.launch.run(main, nprocs=4, args=(10,))

Run as `python train.py` it spawns 4 local ranks (gloo on 127.0.0.1, a free
port picked automatically). Run as `torchrun --nproc-per-node=4 train.py` (or
with c10d rendezvous across machines) it initialises from env:// and calls
`main` once in each process torchrun started. Either way the process group is
initialised before `main` runs and destroyed after.

Failures: the first rank to raise makes `launch` terminate the other ranks and
raise `LaunchError` carrying that rank's traceback. Children die with the
parent (each watches a pipe only the parent holds, `new_process`), and Ctrl-C
terminates every child before returning.
Ranks start from a forkserver that has imported torch once (`process_context`).
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import pickle
import signal
import socket
import sys
import time
import traceback
from typing import Any, Callable

from weft.errors import LaunchError

DEFAULT_TIMEOUT = 120.0  # seconds, for rendezvous and every collective


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def under_torchrun() -> bool:
    """True in a worker that torchrun (torchelastic) started: its agent sets both variables."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


def env_rendezvous() -> bool:
    """True when this process is one rank of an env:// job: torchrun's workers, a launcher
    that sets RANK / WORLD_SIZE / MASTER_ADDR itself (mpirun, Slurm scripts), or one of
    `launch`'s own children."""
    return under_torchrun() or all(v in os.environ for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() and os.environ.get("WEFT_BACKEND") != "gloo" else \
        os.environ.get("WEFT_BACKEND", "gloo")


def init_process_group(backend: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Initialise torch.distributed from env:// (what torchrun and `launch` both set)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = backend or default_backend()
    kw = {}
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        kw["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend=backend, init_method="env://",
                            timeout=datetime.timedelta(seconds=timeout), **kw)


# What a new process needs before it runs anything: imported once by the forkserver, so a
# rank starts in a fraction of a second instead of importing torch again (seconds of CPU).
# The torch.distributed parts a plan uses (DTensor, tp, fully_shard, pipelining, dcp) cost
# another 1.5 s of import per rank; none of them starts a thread when imported.
PRELOAD = ["torch", "torch.distributed", "torch.distributed.tensor", "torch.distributed.tensor.parallel",
           "torch.distributed.fsdp", "torch.distributed.pipelining", "torch.distributed.checkpoint"]


def process_context():
    """The multiprocessing context weft starts ranks and workers with.

    A forkserver with torch preloaded where the platform has one, else spawn; never a
    plain fork (the parent may hold threads and accelerator state). Set
    ``WEFT_START_METHOD=spawn`` to start every process from scratch instead.
    Start processes with :func:`new_process`, which gives each the parent's environment
    as it is at that moment (a forkserver's children would otherwise see the environment
    the forkserver started with).
    """
    method = os.environ.get("WEFT_START_METHOD", "forkserver")
    if method not in ("forkserver", "spawn"):
        raise LaunchError(f"WEFT_START_METHOD must be forkserver or spawn, got {method!r}")
    if method == "forkserver" and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


class _ParentFd:
    """The parent's file descriptor ``fd`` as it is when the process starts (a forkserver's
    children otherwise write to wherever the forkserver's stdout pointed when it started)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        from multiprocessing import reduction

        try:
            os.fstat(self.fd)
        except OSError:
            return (int, (-1,))
        return (_detach, (reduction.DupFd(self.fd),))


def _detach(dup) -> int:
    return dup.detach()


_LIFELINE: tuple[int, int, int] | None = None   # (pid, read end, write end)


def _lifeline() -> int:
    """The read end of a pipe whose write end only this process holds, open for its whole
    life: its children read EOF when it dies, however it dies (a forkserver's children
    cannot use PR_SET_PDEATHSIG on it: their parent is the forkserver)."""
    global _LIFELINE
    if _LIFELINE is None or _LIFELINE[0] != os.getpid():
        r, w = os.pipe()            # not inherited by exec'd programs (O_CLOEXEC)
        _LIFELINE = (os.getpid(), r, w)
    return _LIFELINE[1]


def _watch_parent(fd: int) -> None:
    def watch():
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)       # the parent is gone: so is this process

    import threading

    threading.Thread(target=watch, name="weft-lifeline", daemon=True).start()


def _in_env(environ: dict, stdio: tuple, target: Callable[..., Any], args: tuple) -> Any:
    *stdio, lifeline = stdio
    if isinstance(lifeline, int) and lifeline >= 0:
        _watch_parent(lifeline)
    for want, fd in zip((1, 2), stdio):
        if isinstance(fd, int) and fd >= 0 and fd != want:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
            os.dup2(fd, want)
            os.close(fd)
    if os.environ != environ:
        os.environ.clear()
        os.environ.update(environ)
    return target(*args)


def new_process(ctx, target: Callable[..., Any], args: tuple = (), name: str | None = None,
                daemon: bool = False):
    """``ctx.Process(target=target, args=args)`` run with the environment, stdout and stderr
    the parent has now, as a spawned process would be, and that dies when the parent does."""
    fds = (_ParentFd(1), _ParentFd(2), _ParentFd(_lifeline()))
    return ctx.Process(target=_in_env, args=(dict(os.environ), fds, target, tuple(args)), name=name,
                       daemon=daemon)


def _child(fn, args, rank, world, port, backend, timeout, env, queue, threads) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world)})
    os.environ.update(env or {})
    import torch.distributed as dist

    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        init_process_group(backend, timeout)
        result = fn(*args)
        # Plain pickle, not the multiprocessing pickler: tensors travel by value
        # rather than as shared-memory handles that die with this process.
        queue.put((rank, time.time(), "ok", pickle.dumps(result)))
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        # Report before tearing the group down: closing our sockets makes the
        # other ranks fail too, and the parent should see the root cause.
        tb = traceback.format_exc()
        try:
            queue.put((rank, time.time(), "error", f"{type(exc).__name__}: {exc}\n{tb}"))
        except Exception:  # unpicklable or closed queue: the exit code still tells
            pass
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(fn: Callable[..., Any], nprocs: int, args: tuple = (), backend: str = "gloo",
           timeout: float = DEFAULT_TIMEOUT, env: dict | None = None,
           threads_per_rank: int | None = 1) -> list[Any]:
    """Spawn `nprocs` local ranks running `fn(*args)`; return their results by rank.

    `fn` must be importable (a module-level function). `timeout` bounds the
    rendezvous and each collective, and the whole run is bounded by
    `max(600, 10*timeout)` seconds. Raises LaunchError on any failure.
    """
    if nprocs < 1:
        raise LaunchError(f"nprocs must be >= 1, got {nprocs}")
    ctx = process_context()
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [new_process(ctx, _child, (fn, args, r, nprocs, port, backend, timeout, env, queue,
                                       threads_per_rank), name=f"weft-rank{r}")
             for r in range(nprocs)]
    results: dict[int, Any] = {}
    deadline = time.monotonic() + max(600.0, 10 * timeout)
    try:
        for p in procs:
            p.start()
        while len(results) < nprocs:
            while not queue.empty():
                rank, stamp, status, payload = queue.get()
                if status == "error":
                    raise _first_error(queue, nprocs, (stamp, rank, payload))
                results[rank] = pickle.loads(payload)
            for r, p in enumerate(procs):
                if p.exitcode is not None and r not in results and queue.empty():
                    # Give a just-written result a moment to arrive before judging.
                    time.sleep(0.2)
                    if not queue.empty():
                        break
                    how = (f"was killed by signal {-p.exitcode}" if p.exitcode < 0
                           else f"exited with code {p.exitcode}")
                    raise LaunchError(f"rank {r} of {nprocs} {how} without a result "
                                      "(see its output above)", rank=r)
            if time.monotonic() > deadline:
                raise LaunchError(f"ranks did not finish within {deadline:.0f} s")
            time.sleep(0.02)
        for p in procs:
            p.join(timeout=timeout)
        return [results[r] for r in range(nprocs)]
    finally:
        _reap(procs)


def _first_error(queue, nprocs, first) -> LaunchError:
    """Collect errors for a moment and report the earliest: the root cause, not the
    'connection closed by peer' its neighbours saw."""
    errors = [first]
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        while not queue.empty():
            rank, stamp, status, payload = queue.get()
            if status == "error":
                errors.append((stamp, rank, payload))
        time.sleep(0.05)
    stamp, rank, payload = min(errors)
    others = sorted(r for _, r, _ in errors if r != rank)
    also = f" (ranks {others} failed after it)" if others else ""
    return LaunchError(f"rank {rank} of {nprocs} failed{also}:\n{payload}", rank=rank,
                       traceback=payload)


def _reap(procs) -> None:
    """Terminate, then kill, any child still alive; leave no orphan."""
    alive = [p for p in procs if p.pid is not None and p.is_alive()]
    for p in alive:
        p.terminate()
    end = time.monotonic() + 5
    for p in alive:
        p.join(timeout=max(0.0, end - time.monotonic()))
    for p in alive:
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def run(fn: Callable[..., Any], nprocs: int = 1, args: tuple = (), backend: str | None = None,
        timeout: float = DEFAULT_TIMEOUT, **kw) -> Any:
    """Run `fn` in every rank: in-process under torchrun (or any env:// launcher), else spawn
    `nprocs` local ranks.

    Under torchrun returns this rank's result; otherwise the list of all ranks' results.
    """
    if env_rendezvous():
        import torch.distributed as dist

        init_process_group(backend, timeout)
        try:
            return fn(*args)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    return launch(fn, nprocs, args, backend=backend or "gloo", timeout=timeout, **kw)
