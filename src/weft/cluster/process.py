"""The executor's side of the job contract: one segment of a job as a process.

``JobProcess`` starts a job's task (model spec or command, see ``tasks.py``)
with the contract's environment, asks it to stop through the stop file, reads
its progress from the status file and, once it has exited, judges the segment:
finished, stopped as asked, or failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from weft.cluster.contract import JobEnv
from weft.cluster.mechanism import Lease
from weft.cluster.model import Job
from weft.errors import LaunchError


class JobProcess:
    def __init__(self, job: Job, env: JobEnv, lease: Lease):
        self.job, self.env, self.lease = job, env, lease
        self.stop_sent = False
        self.stop_time = 0.0          # time.monotonic() when the stop was requested
        self.start_time = 0.0         # when the process was started
        self.started_at: float | None = None   # when it first reported (start-up over)
        self.proc: subprocess.Popen | None = None

    @property
    def workers(self) -> tuple[int, ...]:
        return self.lease.workers

    def start(self) -> None:
        env = self.env
        env.job_dir.mkdir(parents=True, exist_ok=True)
        env.stop_file.unlink(missing_ok=True)
        env.mark_waiting()
        self.start_time = time.monotonic()
        argv, cwd = self.job.task.command(env)
        with open(env.job_dir / "log.txt", "a") as log:
            try:
                # Its own process group: Ctrl-C reaches the executor only, which then
                # stops each job through the contract; kill() ends the whole group.
                self.proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env={**os.environ, **env.variables()},
                                             start_new_session=True)
            except OSError as exc:
                raise LaunchError(f"job {self.job.job_id}: cannot start {argv[0]!r}: {exc}") from None

    def request_stop(self) -> None:
        """Ask the job to checkpoint and exit after its current step."""
        if not self.stop_sent:
            self.env.stop_file.touch()
            self.stop_sent, self.stop_time = True, time.monotonic()

    def trained(self) -> float:
        """Seconds since the job reported that start-up was over (0 until it has)."""
        now = time.monotonic()
        if self.started_at is None and self.env.started():
            self.started_at = now
        return 0.0 if self.started_at is None else now - self.started_at

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def progress(self) -> int:
        return self.env.progress()

    def finished(self) -> bool:
        """After exit: True when all steps are done, False when it stopped as asked;
        LaunchError (with the log's tail) for any other ending."""
        rc = self.proc.wait()
        step = self.progress()
        if rc == 0 and step >= self.env.total_steps:
            return True
        if rc == 0 and self.stop_sent:
            return False
        why = (f"exited with code {rc}" if rc else
               f"exited at step {step} of {self.env.total_steps} without being asked to stop "
               f"(report progress in {self.env.status_file.name})")
        try:
            tail = (self.env.job_dir / "log.txt").read_text()[-3000:]
        except OSError:
            tail = ""
        raise LaunchError(f"job {self.job.job_id} ({self.job.job_type}) {why}:\n{tail}")

    def kill(self, timeout: float = 30.0) -> None:
        """End the job now (the executor is giving up): ask it to stop, wait, then kill
        its process group."""
        if self.proc is None or self.exited():
            return
        self.request_stop()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
