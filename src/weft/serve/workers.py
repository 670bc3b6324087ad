"""Class-parallel serving across worker processes.

W spawned processes each load some of a bundle's subnets (balanced by FLOPs, largest first onto
the least loaded worker) and limit themselves to `threads` intra-op threads. Every input batch is
given to all workers at once; each runs its subnets and answers with their calibrated
probabilities, which the parent combines exactly as the in-process Ensemble does (same
`Member.probs`, same `combine`), so both give identical answers.

Transport: batches of up to `shm_batch` inputs go through shared memory (one input buffer all
workers read, one output buffer per worker, a request and an answer semaphore per worker), so a
request costs a copy into the buffer and two semaphore posts per worker instead of pickling
arrays through a pipe (on the 2-core development VM a pipe round trip of a 4 KiB array took
~0.25 ms, a semaphore round trip through shared memory a few microseconds). Larger batches, error
tracebacks and the start handshake use a pipe per worker. After answering, a worker polls for the
next request for `spin` seconds before it sleeps, so back-to-back requests do not pay for waking
it up. Not torch.distributed collectives: each request is a small point-to-point exchange with
the parent, a worker that dies shows up as a dead process instead of a hung collective, and no
rendezvous is needed. Every wait has a timeout.
"""

from __future__ import annotations

import math
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


# Shared-memory protocol. Each worker has a request and an answer semaphore and a small int64
# header; all workers read one shared input buffer and each writes its own output buffer.
_STOP, _SHM, _PIPE = 0, 1, 2         # header[0]: what the request is (the input is in shared
#                                      memory, or too big for it and on the pipe)
_OK_SHM, _OK_PIPE, _ERROR = 0, 1, 2  # header[3]: where the answer is (an error's traceback is on
#                                      the pipe)


class _Slot:
    """One worker's end of the shared memory: header, its output buffer and semaphores, plus
    the input buffer every worker shares. Picklable to a new process (multiprocessing shares
    the RawArrays and semaphores with it)."""

    def __init__(self, ctx, inputs, out_floats: int):
        self.inputs = inputs
        self.header = ctx.RawArray("q", 4)
        self.out = ctx.RawArray("f", max(1, out_floats))
        self.request = ctx.Semaphore(0)
        self.answer = ctx.Semaphore(0)

    def views(self):
        return (np.frombuffer(self.header, np.int64), torch.from_numpy(np.frombuffer(self.inputs, np.float32)),
                torch.from_numpy(np.frombuffer(self.out, np.float32)))


def _acquire(sem, spin: float, timeout: float) -> bool:
    """Take `sem`: polling it for up to `spin` seconds first (no sleep, so no wake-up to pay
    when it comes soon), then sleeping on it for up to `timeout` s. True when taken."""
    if sem.acquire(False):
        return True
    if spin > 0:
        end = time.perf_counter() + spin
        while time.perf_counter() < end:
            if sem.acquire(False):
                return True
            os.sched_yield()  # let a process waiting for this core (the parent) run first
    return sem.acquire(True, timeout)


def _worker_main(conn, path: str, names: list[str], threads: int, fold: bool, slot: _Slot,
                 spin: float) -> None:
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
        header, inputs, out = slot.views()
        shape, numel = tuple(bundle.input_shape), math.prod(bundle.input_shape)
        widths = [len(m.classes) for m in members]
        conn.send(("ready", os.getpid(), not_folded))
    except BaseException:  # noqa: BLE001 - sent to the parent as the start failure
        conn.send(("error", None, traceback.format_exc()))
        return
    while True:
        while not _acquire(slot.request, spin, 1.0):
            pass  # idle (the lifeline ends this process if the parent dies)
        op, n, rid = (int(v) for v in header[:3])
        if op == _STOP:
            return
        try:
            if op == _PIPE:
                got, x = conn.recv()
                if got != rid:
                    raise RuntimeError(f"the pipe carries request {got}, expected {rid}")
                x = torch.from_numpy(x)
            else:
                x = inputs[: n * numel].view(n, *shape)
            with torch.inference_mode():
                if op == _SHM:  # each member's probabilities straight into its columns
                    res, col = out[: n * sum(widths)].view(n, sum(widths)), 0
                    for m, k in zip(members, widths):
                        res[:, col:col + k] = m.probs(x)
                        col += k
                    header[3] = _OK_SHM
                else:
                    conn.send((rid, torch.cat([m.probs(x) for m in members], 1).numpy()))
                    header[3] = _OK_PIPE
        except Exception:  # noqa: BLE001 - sent to the parent, the worker keeps serving
            conn.send((rid, traceback.format_exc()))
            header[3] = _ERROR
        slot.answer.release()


def _shutdown(procs, conns, slots, tmpdir, timeout: float) -> None:
    for s in slots:
        np.frombuffer(s.header, np.int64)[0] = _STOP
        s.request.release()
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
    Batches of up to `shm_batch` inputs travel through shared memory, larger ones over the pipe.
    `spin`: seconds a worker keeps polling for the next request after answering one before it
    sleeps (0: always sleep; each sleep costs a wake-up). The parent sleeps while workers compute
    (polling there took a core from the workers for no gain measured).
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, workers: int = 1, threads: int | None = None,
                 timeout: float = 30.0, start_timeout: float = 120.0, fold: bool = True,
                 shm_batch: int = 64, spin: float = 0.002):
        self._tmp = None
        if isinstance(bundle, Bundle):
            if bundle.path is None:
                self._tmp = tempfile.mkdtemp(prefix="weft-bundle-")
                bundle.save(Path(self._tmp) / "bundle")
            path = bundle.path
        else:
            path = Path(bundle)
        if shm_batch < 0 or not spin >= 0:
            raise ServeError(f"shm_batch={shm_batch}, spin={spin}: expected shm_batch >= 0 and spin >= 0")
        verify(path)  # bundle.json and every file's size and sha256, before any worker starts
        meta = Bundle.load(path, members=[])
        self.bundle = meta
        self.path = path
        self.workers = workers
        self.threads = threads or max(1, cpu_count() // workers)
        self.timeout = timeout
        self.shm_batch = shm_batch
        self.spin = spin
        self.groups = assign([m.info.get("flops", 1.0) for m in meta.members], workers)
        self._classes = [[c for i in g for c in meta.members[i].classes] for g in self.groups]
        self._lock = threading.Lock()
        self._rid = 0
        self.broken: str | None = None
        self.not_folded: dict[str, str] = {}
        ctx = process_context()
        self._numel = math.prod(meta.input_shape)
        inputs = ctx.RawArray("f", max(1, shm_batch * self._numel))
        self.slots = [_Slot(ctx, inputs, shm_batch * len(c)) for c in self._classes]
        self._views = [s.views() for s in self.slots]
        self.procs, self.conns = [], []
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self.conns, self.slots, self._tmp, 5.0)
        for w, g in enumerate(self.groups):
            parent, child = ctx.Pipe()
            p = new_process(ctx, _worker_main, (child, str(path), [meta.members[i].name for i in g],
                                                self.threads, fold, self.slots[w], spin),
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

    def _died(self, w: int, what: str) -> WorkerError:
        p = self.procs[w]
        self.broken = f"worker {w} (pid {p.pid}) exited with code {p.exitcode}"
        return WorkerError(f"{self.broken} during {what}")

    def _recv(self, w: int, timeout: float, what: str):
        c, p = self.conns[w], self.procs[w]
        deadline = time.monotonic() + timeout
        while not c.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
            if not p.is_alive():
                raise self._died(w, what)
            if time.monotonic() >= deadline:
                self.broken = f"worker {w} did not answer {what} within {timeout:g} s"
                raise WorkerError(self.broken)
        try:
            return c.recv()
        except (EOFError, OSError) as exc:
            self.broken = f"worker {w} (pid {p.pid}) closed its pipe ({type(exc).__name__})"
            raise WorkerError(f"{self.broken} during {what}") from None

    def _await(self, w: int, what: str) -> None:
        """Wait for worker w's answer semaphore (a dead or silent worker is a WorkerError)."""
        sem, p = self.slots[w].answer, self.procs[w]
        deadline = time.monotonic() + self.timeout
        while not sem.acquire(True, min(0.5, max(0.0, deadline - time.monotonic()))):
            if not p.is_alive():
                raise self._died(w, what)
            if time.monotonic() >= deadline:
                self.broken = f"worker {w} did not answer {what} within {self.timeout:g} s"
                raise WorkerError(self.broken)

    def alive(self) -> str | None:
        """None when every worker is up, else why not."""
        if self.broken:
            return self.broken
        for w, p in enumerate(self.procs):
            if not p.is_alive():
                return f"worker {w} (pid {p.pid}) exited with code {p.exitcode}"
        return None

    def _scores(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        shm = n <= self.shm_batch
        with self._lock:
            if self.broken:
                raise WorkerError(f"worker pool is broken: {self.broken}")
            self._rid += 1
            rid = self._rid
            what = f"request {rid}"
            if shm:  # one copy into the input buffer every worker reads
                self._views[0][1][: n * self._numel].view_as(batch).copy_(batch)
            else:
                arr = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
            for w, (header, _, _) in enumerate(self._views):
                header[:3] = (_SHM if shm else _PIPE, n, rid)
                if not shm:
                    try:
                        self.conns[w].send((rid, arr))
                    except (OSError, ValueError) as exc:
                        self.broken = f"worker {w} cannot be reached ({type(exc).__name__}: {exc})"
                        raise WorkerError(self.broken) from None
                self.slots[w].request.release()
            parts, errors = [], []
            for w, (header, _, out) in enumerate(self._views):
                self._await(w, what)
                kind = int(header[3])
                if kind == _OK_SHM:
                    k = len(self._classes[w])
                    parts.append((self._classes[w], out[: n * k].view(n, k)))
                    continue
                got, payload = self._recv(w, self.timeout, what)
                if got != rid:
                    self.broken = f"worker {w} answered request {got}, expected {rid}"
                    raise WorkerError(self.broken)
                if kind == _ERROR:
                    errors.append(f"worker {w}:\n{payload}")
                else:
                    parts.append((self._classes[w], torch.from_numpy(payload)))
            if errors:
                raise WorkerError("\n".join(errors))
            return combine(self.num_classes, parts)  # copies out of the buffers, under the lock

    def close(self) -> None:
        """Stop the workers (each finishes its current request), waiting up to 5 s each."""
        self._finalizer()
