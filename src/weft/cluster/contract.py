"""The contract between the cluster executor and a job's process.

Every job, a model spec or a command, runs as one process started with these
environment variables (``JobEnv.variables``)::

    WEFT_JOB_DIR       the job's own directory, kept across preemptions
    WEFT_CHECKPOINT    where to keep the checkpoint ($WEFT_JOB_DIR/ckpt.pt; the format is the job's)
    WEFT_STATUS_FILE   JSON the job rewrites once started (before its first step) and after every
                       step: {"step": N}
    WEFT_STOP_FILE     appears when the job must stop: finish the step, checkpoint, exit 0
    WEFT_TOTAL_STEPS   steps to run in all
    WEFT_NPROCS        workers to use (the job's scale factor)
    WEFT_SEED          the job's seed
    WEFT_STEP_SECONDS  pad each step to this many seconds (speed emulation; 0: none)
    WEFT_STEP_PHASE    "EPOCH,OFFSET,PERIOD" for a job sharing its slots with a partner (tick-tock):
                       start steps only at EPOCH + OFFSET + k * PERIOD (wall clock, time.time());
                       empty otherwise. ``JobEnv.pace`` does both.
    WEFT_SLOTS         the leased slot ids, comma-separated
    WEFT_ACCEL_TYPE    their accelerator type

A job resumes from its checkpoint when one exists, and exits 0 once it has done
all its steps or was asked to stop; the last step it reports is its progress.
Before each start the executor marks the status file as waiting; the job's
first report says start-up is over (the executor never preempts a job before
it has trained for one round after that).
A non-zero exit, or exit 0 short of the total without a stop request, is a
failure. A job whose step ``s`` depends only on (seed, s) and the state after
step ``s - 1`` ends, however often it is preempted, where an uninterrupted run
ends. A command gets the same values as placeholders in its argument list:
``{job_dir} {checkpoint} {status_file} {stop_file} {total_steps} {nprocs} {seed}``, and
``{python}``, the executor's own interpreter.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from weft.atomic import write_json
from weft.cluster.model import ClusterError

PLACEHOLDERS = ("job_dir", "checkpoint", "status_file", "stop_file", "total_steps", "nprocs", "seed", "python")


@dataclass(frozen=True)
class JobEnv:
    job_dir: Path
    total_steps: int
    nprocs: int = 1
    seed: int = 0
    step_seconds: float = 0.0
    slots: tuple[int, ...] = ()
    accel_type: str = ""
    phase: tuple[float, float, float] = ()    # (epoch, offset, period) seconds; () when alone

    @property
    def checkpoint(self) -> Path:
        return self.job_dir / "ckpt.pt"

    @property
    def status_file(self) -> Path:
        return self.job_dir / "status.json"

    @property
    def stop_file(self) -> Path:
        return self.job_dir / "stop"

    def values(self) -> dict[str, str]:
        """The placeholders a command line may use."""
        return {"job_dir": str(self.job_dir), "checkpoint": str(self.checkpoint),
                "status_file": str(self.status_file), "stop_file": str(self.stop_file),
                "total_steps": str(self.total_steps), "nprocs": str(self.nprocs), "seed": str(self.seed),
                "python": sys.executable}

    def variables(self) -> dict[str, str]:
        """The environment the executor gives the job's process."""
        v = {f"WEFT_{k.upper()}": s for k, s in self.values().items() if k != "python"}
        v.update(WEFT_STEP_SECONDS=repr(float(self.step_seconds)),
                 WEFT_SLOTS=",".join(map(str, self.slots)), WEFT_ACCEL_TYPE=self.accel_type,
                 WEFT_STEP_PHASE=",".join(repr(float(x)) for x in self.phase))
        return v

    @classmethod
    def from_env(cls, environ=None) -> JobEnv:
        """The job side: read the contract from the environment."""
        environ = os.environ if environ is None else environ
        missing = [k for k in ("WEFT_JOB_DIR", "WEFT_TOTAL_STEPS") if not environ.get(k)]
        if missing:
            raise ClusterError(f"not started by the weft cluster executor: {', '.join(missing)} not set")
        slots = environ.get("WEFT_SLOTS", "")
        phase = environ.get("WEFT_STEP_PHASE", "")
        try:
            env = cls(Path(environ["WEFT_JOB_DIR"]), int(environ["WEFT_TOTAL_STEPS"]),
                      int(environ.get("WEFT_NPROCS", 1)), int(environ.get("WEFT_SEED", 0)),
                      float(environ.get("WEFT_STEP_SECONDS", 0.0)),
                      tuple(int(s) for s in slots.split(",") if s), environ.get("WEFT_ACCEL_TYPE", ""),
                      tuple(float(x) for x in phase.split(",") if x))
        except ValueError as exc:
            raise ClusterError(f"bad WEFT_* environment variable: {exc}") from None
        if env.phase and (len(env.phase) != 3 or not env.phase[2] > 0):
            raise ClusterError(f"bad WEFT_STEP_PHASE {phase!r}: expected EPOCH,OFFSET,PERIOD with PERIOD > 0")
        return env

    def next_step_at(self, now: float) -> float:
        """With a phase: the first grid time ``epoch + offset + k * period`` at or after ``now``
        (time.time() seconds); without one: ``now``."""
        if not self.phase:
            return now
        epoch, offset, period = self.phase
        k = math.ceil((now - epoch - offset) / period - 1e-9)
        return epoch + offset + k * period

    def pace(self, step_start: float | None) -> None:
        """The job side, speed emulation: call before the first step with None and after each
        step with the time.time() it started. With a phase, sleep until the next grid time (a
        step that overruns the period skips grid times: the phase is kept, not the count);
        otherwise pad the step to ``step_seconds``."""
        now = time.time()
        if self.phase:
            time.sleep(max(0.0, self.next_step_at(now) - now))
        elif step_start is not None and self.step_seconds:
            time.sleep(max(0.0, self.step_seconds - (now - step_start)))

    def stop_requested(self) -> bool:
        return self.stop_file.exists()

    def report(self, step: int) -> None:
        """The job side: record that ``step`` steps are done (atomically)."""
        write_json(self.status_file, {"step": int(step)}, indent=None)

    def _status(self) -> dict:
        try:
            data = json.loads(self.status_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def progress(self) -> int:
        """Steps done so far according to the status file (0 before the first report)."""
        try:
            return int(self._status().get("step", 0))
        except (ValueError, TypeError):
            return 0

    def mark_waiting(self) -> None:
        """The executor side, before a start: keep the progress, mark that no report came yet."""
        write_json(self.status_file, {"step": self.progress(), "waiting": True}, indent=None)

    def started(self) -> bool:
        """Whether the job has reported since the last ``mark_waiting``."""
        status = self._status()
        return bool(status) and not status.get("waiting")
