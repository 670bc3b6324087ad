"""A communication thread: collectives run in the background, in issue order.

    pt = ProgressThread("weft-comm")
    work = pt.submit(fn)        # fn runs on the thread, after every earlier fn
    ...                         # the caller computes meanwhile
    work.is_completed()         # True once fn has returned
    work.wait()                 # blocks; re-raises fn's exception

One thread per communicator keeps the order of collectives the same on every
rank (they all issue in the same order), which point-to-point schedules need.
After a failure the thread refuses later work with the same error (the ranks
may disagree on what was sent, so going on could deadlock or mix messages).
"""

from __future__ import annotations

import queue
import threading
import weakref

import torch


class BackgroundWork:
    """Handle of one submitted collective (torch's Work-like interface)."""

    def __init__(self, fn):
        self._fn = fn
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._future: torch.futures.Future = torch.futures.Future()
        self.result = None

    def is_completed(self) -> bool:
        return self._done.is_set()

    def is_success(self) -> bool:
        return self._done.is_set() and self._error is None

    def exception(self) -> BaseException | None:
        return self._error

    def wait(self, timeout: float | None = None) -> bool:
        if not self._done.wait(timeout):
            raise TimeoutError(f"collective not finished within {timeout} s")
        if self._error is not None:
            raise self._error
        return True

    def get_future(self) -> torch.futures.Future:
        """A torch Future set (with fn's return value) when the collective finishes."""
        return self._future

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            self._fail(exc)
            return
        self._done.set()
        self._future.set_result(self.result)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._done.set()
        self._future.set_exception(exc)


class ProgressThread:
    """Runs submitted functions one after another on a daemon thread."""

    def __init__(self, name: str = "weft-comm"):
        self.name = name
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.broken: BaseException | None = None
        self.closed = False
        self._finalizer = weakref.finalize(self, ProgressThread._stop, self._q)

    def submit(self, fn) -> BackgroundWork:
        if self.closed:
            raise RuntimeError(f"{self.name}: the communicator was closed")
        if self.broken is not None:
            raise RuntimeError(f"an earlier collective failed, so this communicator cannot go "
                               f"on: {self.broken!r}") from self.broken
        work = BackgroundWork(fn)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, args=(self._q, weakref.ref(self)),
                                                name=self.name, daemon=True)
                self._thread.start()
            self._q.put(work)
        return work

    @staticmethod
    def _loop(q: queue.SimpleQueue, owner) -> None:
        while True:
            work = q.get()
            if work is None:
                return
            me = owner()
            broken = me.broken if me is not None else None
            del me
            if broken is not None:
                work._fail(RuntimeError(f"an earlier collective failed: {broken!r}"))
                continue
            work._run()
            if work._error is not None:
                me = owner()
                if me is not None:
                    me.broken = work._error
                del me

    @staticmethod
    def _stop(q: queue.SimpleQueue) -> None:
        q.put(None)

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the work already submitted, then stop the thread."""
        self.closed = True
        self._finalizer()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
