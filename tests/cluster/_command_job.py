"""A command job that follows the executor's contract with the standard library only.

Its "training" is a 64-bit LCG over (seed, step): step s's state depends only on the
state after s - 1 and on s, so a preempted and resumed run must end where an
uninterrupted one does. It appends the step it starts from to segments.txt, and each
step's start (wall clock) to steps.txt. With ``WEFT_STEP_PHASE`` (a co-located pair in
tick-tock) a step starts only at ``epoch + offset + k * period``, as the contract says.
``--wait-for-start DIR`` holds its start-up until the job in DIR has reported
(tests use it to make one job's start-up wait on another's progress).
"""

import json
import math
import os
import sys
import time
from pathlib import Path


def write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def started(job_dir: Path) -> bool:
    try:
        return not json.loads((job_dir / "status.json").read_text()).get("waiting")
    except (FileNotFoundError, ValueError):
        return False


def wait_for_turn(phase: list[float]) -> None:
    """Sleep until the next time on the phase grid (contract.py: WEFT_STEP_PHASE)."""
    epoch, offset, period = phase
    now = time.time()
    k = math.ceil((now - epoch - offset) / period - 1e-9)
    time.sleep(max(0.0, epoch + offset + k * period - now))


def main(argv: list[str]) -> int:
    env = os.environ
    ckpt, status, stop = (Path(env[k]) for k in ("WEFT_CHECKPOINT", "WEFT_STATUS_FILE", "WEFT_STOP_FILE"))
    total, seed = int(env["WEFT_TOTAL_STEPS"]), int(env["WEFT_SEED"])
    pad = float(env.get("WEFT_STEP_SECONDS", 0))
    phase = [float(v) for v in env.get("WEFT_STEP_PHASE", "").split(",") if v]
    if argv[:1] == ["--wait-for-start"]:
        end = time.monotonic() + 120
        while not started(Path(argv[1])):
            if time.monotonic() > end:
                print(f"{argv[1]} never started", file=sys.stderr)
                return 3
            time.sleep(0.02)
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "x": seed}
    step, x = state["step"], state["x"]
    with open(Path(env["WEFT_JOB_DIR"]) / "segments.txt", "a") as f:
        f.write(f"{step}\n")
    write(status, {"step": step})
    starts = open(Path(env["WEFT_JOB_DIR"]) / "steps.txt", "a")
    while step < total:
        if phase:
            wait_for_turn(phase)
        starts.write(f"{step} {time.time():.6f}\n")
        starts.flush()
        x = (x * 6364136223846793005 + 1442695040888963407 + step) % 2**64
        step += 1
        if not phase:
            time.sleep(pad)
        if stop.exists() or step == total:
            write(ckpt, {"step": step, "x": x})
            write(status, {"step": step})
            if stop.exists():
                break
        else:
            write(status, {"step": step})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
