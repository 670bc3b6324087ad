"""Class-parallel serving across worker processes.

W spawned processes each load some of a bundle's subnets (balanced by FLOPs, largest first onto
the least loaded worker) and limit themselves to `threads` intra-op threads. Every input batch is
sent to all workers at once over a pipe; each runs its subnets and answers with their calibrated
probabilities, which the parent combines exactly as the in-process Ensemble does (same
`Member.probs`, same `combine`), so both give identical answers.

Pipes, not torch.distributed collectives: each request is a small point-to-point exchange with
the parent, a worker that dies shows up as a closed pipe instead of a hung collective, and no
rendezvous is needed. Every wait has a timeout. Arrays travel as numpy (plain pickle), which is
faster than torch's shared-memory tensor passing for single inputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import traceback
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing  # registers tensor pickling for the pipes

from weft.launch import new_process, process_context
from weft.serve.bundle import Bundle, verify
from weft.serve.ensemble import Predictor, combine
from weft.serve.errors import ServeError, WorkerError


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def assign(flops: list[float], workers: int) -> list[list[int]]:
    """Member indices per worker: largest first onto the least loaded worker (LPT)."""
    if not 1 <= workers <= len(flops):
        raise ServeError(f"workers={workers}: must be between 1 and the bundle's {len(flops)} subnets")
    load = [0.0] * workers
    out: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(flops)), key=lambda i: (-flops[i], i)):
        w = min(range(workers), key=lambda w: (load[w], w))
        out[w].append(i)
        load[w] += flops[i]
    return [sorted(o) for o in out]


def _worker_main(conn, path: str, names: list[str], threads: int, fold: bool = True) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    try:
        bundle = Bundle.load(path, members=names)
        members = [m for m in bundle.members if m.name in names]
        not_folded = {m.name: why for m in members
                      if fold and (why := m.fold(bundle.input_shape))}
        for m in members:  # warm up allocator and kernels
            m.probs(torch.zeros(1, *bundle.input_shape))
        conn.send(("ready", os.getpid(), not_folded))
    except BaseException:  # noqa: BLE001 - sent to the parent as the start failure
        conn.send(("error", None, traceback.format_exc()))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent gone
            return
        if msg[0] == "stop":
            return
        _, rid, arr = msg
        try:
            x = torch.from_numpy(arr)
            out = torch.cat([m.probs(x) for m in members], 1).numpy()
            conn.send(("ok", rid, out))
        except Exception:  # noqa: BLE001 - sent to the parent, the worker keeps serving
            conn.send(("error", rid, traceback.format_exc()))


def _shutdown(procs, conns, tmpdir, timeout: float) -> None:
    for c in conns:
        try:
            c.send(("stop",))
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join(2)
        if p.is_alive():
            p.kill()
            p.join(2)
    for c in conns:
        c.close()
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)


class WorkerPool(Predictor):
    """`workers` processes sharing a bundle's subnets; `predict(x)` broadcasts x to all of them.

    `bundle` is a bundle folder or a Bundle (saved to a temporary folder if it has none).
    `threads` is each worker's intra-op thread count (default: this process's cores // workers).
    `fold` as for `Ensemble` (`not_folded` says which members are served as they are).
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, workers: int = 1, threads: int | None = None,
                 timeout: float = 30.0, start_timeout: float = 120.0, fold: bool = True):
        self._tmp = None
        if isinstance(bundle, Bundle):
            if bundle.path is None:
                self._tmp = tempfile.mkdtemp(prefix="weft-bundle-")
                bundle.save(Path(self._tmp) / "bundle")
            path = bundle.path
        else:
            path = Path(bundle)
        verify(path)  # bundle.json and every file's size and sha256, before any worker starts
        meta = Bundle.load(path, members=[])
        self.bundle = meta
        self.path = path
        self.workers = workers
        self.threads = threads or max(1, cpu_count() // workers)
        self.timeout = timeout
        self.groups = assign([m.info.get("flops", 1.0) for m in meta.members], workers)
        self._classes = [[c for i in g for c in meta.members[i].classes] for g in self.groups]
        self._lock = threading.Lock()
        self._rid = 0
        self.broken: str | None = None
        self.not_folded: dict[str, str] = {}
        ctx = process_context()
        self.procs, self.conns = [], []
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self.conns, self._tmp, 5.0)
        for w, g in enumerate(self.groups):
            parent, child = ctx.Pipe()
            p = new_process(ctx, _worker_main, (child, str(path), [meta.members[i].name for i in g],
                                                self.threads, fold),
                            name=f"weft-serve-worker-{w}", daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        for w, c in enumerate(self.conns):
            msg = self._recv(w, start_timeout, "start")
            if msg[0] != "ready":
                self.close()
                raise WorkerError(f"worker {w} failed to load its subnets from {path}:\n{msg[2]}")
            self.not_folded.update(msg[2])

    def _recv(self, w: int, timeout: float, what: str):
        c, p = self.conns[w], self.procs[w]
        deadline = time.monotonic() + timeout
        while not c.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
            if not p.is_alive():
                self.broken = f"worker {w} (pid {p.pid}) exited with code {p.exitcode}"
                raise WorkerError(f"{self.broken} during {what}")
            if time.monotonic() >= deadline:
                self.broken = f"worker {w} did not answer {what} within {timeout:g} s"
                raise WorkerError(self.broken)
        try:
            return c.recv()
        except (EOFError, OSError) as exc:
            self.broken = f"worker {w} (pid {p.pid}) closed its pipe ({type(exc).__name__})"
            raise WorkerError(f"{self.broken} during {what}") from None

    def alive(self) -> str | None:
        """None when every worker is up, else why not."""
        if self.broken:
            return self.broken
        for w, p in enumerate(self.procs):
            if not p.is_alive():
                return f"worker {w} (pid {p.pid}) exited with code {p.exitcode}"
        return None

    def _scores(self, batch: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        with self._lock:
            if self.broken:
                raise WorkerError(f"worker pool is broken: {self.broken}")
            self._rid += 1
            rid = self._rid
            for w, c in enumerate(self.conns):
                try:
                    c.send(("run", rid, arr))
                except (OSError, ValueError) as exc:
                    self.broken = f"worker {w} cannot be reached ({type(exc).__name__}: {exc})"
                    raise WorkerError(self.broken) from None
            parts, errors = [], []
            for w in range(len(self.conns)):
                kind, got, payload = self._recv(w, self.timeout, f"request {rid}")
                if got != rid:
                    self.broken = f"worker {w} answered request {got}, expected {rid}"
                    raise WorkerError(self.broken)
                if kind == "error":
                    errors.append(f"worker {w}:\n{payload}")
                else:
                    parts.append((self._classes[w], torch.from_numpy(payload)))
        if errors:
            raise WorkerError("\n".join(errors))
        return combine(self.num_classes, parts)

    def close(self) -> None:
        """Stop the workers (each finishes its current request), waiting up to 5 s each."""
        self._finalizer()
