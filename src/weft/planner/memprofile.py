"""Memory over one training step: allocated bytes against time, measured, not modelled.

    prof = profile_memory(model, x, y, loss_fn=F.cross_entropy)   # one step of a copy
    prof.peak, prof.baseline, prof.marks["forward_end"]           # bytes, bytes, seconds
    prof.save("mem.json"); plot_profile(prof, "mem.png")
    prof.bins(256)                                                # max per bin: the planner's input

How it is measured. `AllocationRecorder` runs `torch.profiler.profile(profile_memory=True)`,
which makes the allocator of each device report every allocation and free to the profiler
(``c10::reportMemoryUsage``) with its size, address and a timestamp on the wall clock
(``time.time_ns``, so recordings of different processes line up). On CPU that is c10's CPU
allocator: every tensor storage torch allocates, whether an operator, autograd or the
optimizer asked for it; the allocated total is the running sum of those events, so only what
is allocated while recording is seen (`profile_memory` therefore builds the copy of the model,
its optimizer state and the batch inside the recording, from zero). On CUDA the caching
allocator reports its own running total (``total_allocated``, which also counts blocks
allocated before recording), and the profile also keeps ``torch.cuda.max_memory_allocated``
as a check. Neither counts the process's own runtime (interpreter, libraries, CUDA context):
this is the memory the training's tensors occupy on the device.

Times. The profiler slows the step unevenly: it records an event per allocation, so a
backward that allocates much is stretched far more than the forward (a residual CNN's
profiled forward took 7% of the step against a third unprofiled). `profile_memory` therefore
also times `time_steps` unprofiled steps of the same copy after the recording and, by default
(``timing="unprofiled"``), maps each phase of the profiled step (zero_grad + forward + loss,
backward, optimizer step) linearly onto that phase's median unprofiled duration
(`MemoryProfile.retimed`): the phases' boundaries and the period are those of a plain step,
the order of events inside a phase is the recording's. The profiled times stay in ``meta``.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from weft.atomic import write_json
from weft.errors import PlanError
from weft.files import read_json

FORMAT = "weft.memprofile/1"


class AllocationRecorder:
    """Record allocations of `device` ("cpu" or "cuda[:i]") while the block runs.

    After the block, `timeline()` gives (ns timestamps, allocated bytes after each event);
    `mark(name)` stores a timestamp on the same clock (e.g. the end of the forward)."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.marks: dict[str, list[int]] = {}
        self.start_ns = self.end_ns = 0
        self._events: list[tuple[int, int, int]] = []
        self._prof = None

    def __enter__(self) -> AllocationRecorder:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            acts.append(ProfilerActivity.CUDA)
        self._prof = profile(activities=acts, profile_memory=True)
        self._prof.__enter__()
        self.start_ns = time.time_ns()
        return self

    def mark(self, name: str) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t = time.time_ns()
        self.marks.setdefault(name, []).append(t)
        return t

    def __exit__(self, *exc) -> None:
        self.end_ns = time.time_ns()
        self._prof.__exit__(*exc)
        if exc[0] is None:
            self._events = _allocations(self._prof, self.device)
        self._prof = None

    def timeline(self) -> tuple[np.ndarray, np.ndarray]:
        """Event times (ns, wall clock) and the bytes allocated on the device after each."""
        if not self._events:
            return np.array([self.start_ns], np.int64), np.zeros(1)
        t = np.array([e[0] for e in self._events], np.int64)
        if self.device.type == "cuda":  # the caching allocator's own running total
            b = np.array([e[2] for e in self._events], float)
        else:
            b = np.cumsum([e[1] for e in self._events]).astype(float)
        return t, b


def _allocations(prof, device: torch.device) -> list[tuple[int, int, int]]:
    """(time ns, signed size, allocator total) of every allocation event on `device`, in order."""
    from torch._C._profiler import _EventType

    out, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            f = node.extra_fields
            dev = f.device
            if dev.type == device.type and (device.index is None or dev.index == device.index
                                            or device.type == "cpu"):
                out.append((node.start_time_ns, int(f.alloc_size), int(f.total_allocated)))
        stack.extend(node.children)
    out.sort(key=lambda e: e[0])
    return out


@dataclass
class MemoryProfile:
    """Allocated bytes over one training step: a step function through (times[i], bytes[i]).

    ``times`` are seconds from the start of the step (0 .. ``period``); ``bytes[0]`` is what is
    held when the step starts; ``marks`` name moments of the step (``forward_end``,
    ``backward_end``)."""

    times: list[float]
    bytes: list[float]
    period: float
    marks: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    batch_size: int | None = None
    method: str = "torch.profiler allocation events"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.times) != len(self.bytes) or not self.times:
            raise PlanError(f"memory profile: times ({len(self.times)}) and bytes "
                            f"({len(self.bytes)}) must be non-empty and of equal length")
        if not self.period > 0:
            raise PlanError(f"memory profile: period must be > 0 s, got {self.period!r}")

    @property
    def peak(self) -> float:
        return float(max(self.bytes))

    @property
    def baseline(self) -> float:
        return float(self.bytes[0])

    def at(self, t: float | np.ndarray) -> np.ndarray:
        """Bytes allocated at time(s) `t` (seconds from the step's start)."""
        idx = np.searchsorted(np.asarray(self.times), t, side="right") - 1
        return np.asarray(self.bytes)[np.clip(idx, 0, len(self.bytes) - 1)]

    def bins(self, n: int, period: float | None = None) -> np.ndarray:
        """The profile on `n` equal bins of `period` (default its own; a longer one holds the
        last value, the job idling at its trough until the next step): each bin's maximum, so
        a sum of binned profiles never understates the memory they need together."""
        if n < 1:
            raise PlanError(f"bins: need at least one bin, got {n}")
        period = self.period if period is None else period
        if period < self.period * (1 - 1e-9):
            raise PlanError(f"bins: period {period:g} s is shorter than the step "
                            f"({self.period:g} s)")
        t, b = np.asarray(self.times, float), np.asarray(self.bytes, float)
        edges = np.arange(n) * (period / n)
        out = self.at(edges).astype(float)  # the value carried into each bin
        k = np.minimum((t / period * n).astype(int), n - 1)
        np.maximum.at(out, k, b)
        return out

    def retimed(self, phases: dict[str, float]) -> MemoryProfile:
        """This profile with each phase mapped linearly onto the given duration (seconds):
        ``forward`` (from the start to the mark ``forward_end``), ``backward`` (to
        ``backward_end``) and ``rest`` (to the end of the step). Bytes and their order are
        kept; the marks and the period follow; ``meta`` keeps the old times."""
        names = ("forward_end", "backward_end")
        missing = [n for n in names if n not in self.marks]
        if missing:
            raise PlanError(f"retimed: the profile has no mark {missing[0]!r}")
        bad = {k: v for k, v in phases.items() if not (isinstance(v, (int, float)) and v >= 0)}
        if set(phases) != {"forward", "backward", "rest"} or bad or not sum(phases.values()) > 0:
            raise PlanError(f"retimed: need durations >= 0 s for forward, backward and rest "
                            f"(not all 0), got {phases!r}")
        old = [0.0, self.marks["forward_end"], self.marks["backward_end"], self.period]
        if any(b < a for a, b in itertools.pairwise(old)):
            raise PlanError(f"retimed: marks out of order: forward_end {old[1]:g} s, "
                            f"backward_end {old[2]:g} s, step {old[3]:g} s")
        new = list(itertools.accumulate([0.0, phases["forward"], phases["backward"],
                                         phases["rest"]]))
        # piecewise linear, phase by phase (an event at a boundary of an empty phase takes
        # either side: the same moment of the profiled step)
        times = np.interp(np.asarray(self.times, float), old, new)
        marks = {k: float(np.interp(v, old, new)) for k, v in self.marks.items()}
        meta = dict(self.meta, profiled_period_s=self.period, profiled_marks=dict(self.marks))
        return MemoryProfile(list(map(float, times)), list(self.bytes), new[-1], marks,
                             self.device, self.batch_size, self.method, meta)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "period_s": self.period, "device": self.device,
                "batch_size": self.batch_size, "method": self.method,
                "peak_bytes": self.peak, "baseline_bytes": self.baseline, "marks": self.marks,
                "times_s": list(map(float, self.times)), "bytes": list(map(float, self.bytes)),
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict, where: str = "memory profile") -> MemoryProfile:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise PlanError(f"{where}: field 'format' must be {FORMAT!r}, got {got!r}")
        for name in ("period_s", "times_s", "bytes"):
            if name not in d:
                raise PlanError(f"{where}: missing field {name!r}")
        try:
            times = [float(x) for x in d["times_s"]]
            nbytes = [float(x) for x in d["bytes"]]
            period = float(d["period_s"])
        except (TypeError, ValueError) as exc:
            raise PlanError(f"{where}: fields 'times_s', 'bytes' and 'period_s' must be numbers "
                            f"({exc})") from None
        if any(b < 0 for b in nbytes):
            raise PlanError(f"{where}: field 'bytes' has a negative value {min(nbytes)}")
        if any(t1 < t0 for t0, t1 in itertools.pairwise(times)):
            raise PlanError(f"{where}: field 'times_s' must not decrease")
        try:
            return cls(times, nbytes, period, dict(d.get("marks") or {}), str(d.get("device", "cpu")),
                       d.get("batch_size"), str(d.get("method", "")), dict(d.get("meta") or {}))
        except PlanError as exc:
            raise PlanError(f"{where}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> MemoryProfile:
        return cls.from_dict(read_json(path, PlanError, "memory profile"), str(path))


def window(rec: AllocationRecorder, start_ns: int, end_ns: int, **kw) -> MemoryProfile:
    """The part of `rec`'s timeline from `start_ns` to `end_ns` as a MemoryProfile."""
    t, b = rec.timeline()
    before = np.searchsorted(t, start_ns, side="right") - 1
    start_val = float(b[before]) if before >= 0 else 0.0
    inside = (t > start_ns) & (t <= end_ns)
    times = [0.0] + list((t[inside] - start_ns) / 1e9)
    nbytes = [start_val] + list(b[inside])
    marks = {name: (max(v for v in ts if v <= end_ns) - start_ns) / 1e9
             for name, ts in rec.marks.items() if any(start_ns <= v <= end_ns for v in ts)}
    return MemoryProfile(times, nbytes, (end_ns - start_ns) / 1e9, marks, str(rec.device), **kw)


def _sgd(params):
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


def _mean_output(out, y):
    return out.float().mean()


def profile_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                   loss_fn: Callable | None = None, optimizer: Callable = _sgd,
                   warmup: int = 1, device: str = "cpu", timing: str = "unprofiled",
                   time_steps: int = 3) -> MemoryProfile:
    """Profile one training step (zero_grad, forward, loss, backward, optimizer step) of a copy of
    `model` on the batch (`x`, `y`), after `warmup` steps that create the optimizer's state.

    `loss_fn(out, y)` defaults to the mean of the output (same forward and backward memory,
    bar the loss itself). The model, its optimizer and the batch are copied inside the
    recording, so the profile counts everything the step's tensors hold, from zero on CPU.
    `timing` "unprofiled" (default) puts each phase on the median of `time_steps` unprofiled
    steps of the copy (see the module doc); "profiled" keeps the recording's clock."""
    if warmup < 0:
        raise PlanError(f"warmup must be >= 0 steps, got {warmup}")
    if timing not in TIMINGS:
        raise PlanError(f"timing must be one of {', '.join(TIMINGS)}, got {timing!r}")
    if time_steps < 1:
        raise PlanError(f"time_steps must be >= 1, got {time_steps}")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    loss_fn = loss_fn or _mean_output
    with AllocationRecorder(dev) as rec:
        m = copy.deepcopy(model).to(dev).train()
        opt = optimizer([p for p in m.parameters() if p.requires_grad])
        xb = x.to(dev, copy=True)
        yb = y.to(dev, copy=True) if y is not None else None
        for _ in range(warmup + 1):
            start = rec.mark("step_start")
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(m(xb), yb)
            rec.mark("forward_end")
            loss.backward()
            rec.mark("backward_end")
            opt.step()
            end = rec.mark("step_end")
            del loss
    phases = _phase_seconds(m, opt, xb, yb, loss_fn, time_steps, dev) \
        if timing == "unprofiled" else None
    meta = {"model": type(model).__name__, "torch": torch.__version__, "warmup": warmup,
            "params": sum(p.numel() for p in model.parameters()),
            "input_shape": list(x.shape)}
    if dev.type == "cuda":
        meta["allocator_max_allocated"] = int(torch.cuda.max_memory_allocated(dev))
    method = ("torch.profiler allocation events of the CUDA caching allocator (its running "
              "total)" if dev.type == "cuda" else
              "torch.profiler allocation events of c10's CPU allocator (running sum from an "
              "empty start)")
    prof = window(rec, start, end, batch_size=int(x.shape[0]), method=method, meta=meta)
    prof.marks.pop("step_start", None)
    prof.marks.pop("step_end", None)
    del m, opt, xb, yb
    if phases is None:
        return prof
    prof = prof.retimed(phases)
    prof.method += (f"; times: each phase (forward, backward, optimizer) rescaled to the median "
                    f"of {time_steps} unprofiled steps")
    prof.meta["timing"] = "unprofiled"
    return prof


TIMINGS = ("unprofiled", "profiled")


def _phase_seconds(m, opt, xb, yb, loss_fn, steps: int, dev: torch.device) -> dict[str, float]:
    """Median seconds of each phase of `steps` unprofiled training steps (zero_grad + forward
    + loss, backward, optimizer step) of the same model copy."""
    def now():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter()

    got: dict[str, list[float]] = {"forward": [], "backward": [], "rest": []}
    for _ in range(steps):
        t0 = now()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(m(xb), yb)
        t1 = now()
        loss.backward()
        t2 = now()
        opt.step()
        t3 = now()
        del loss
        for k, v in zip(got, (t1 - t0, t2 - t1, t3 - t2)):
            got[k].append(v)
    return {k: float(np.median(v)) for k, v in got.items()}


def plot_profile(profiles: MemoryProfile | list[MemoryProfile], path: str | Path,
                 labels: list[str] | None = None, title: str = "allocated memory over one step",
                 budget: float | None = None) -> Path:
    """Step plot of one or more profiles (MiB against seconds), with their marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from weft.atomic import save_figure

    profiles = [profiles] if isinstance(profiles, MemoryProfile) else list(profiles)
    labels = labels or [f"batch {p.batch_size}" if p.batch_size else f"profile {i}"
                        for i, p in enumerate(profiles)]
    fig, ax = plt.subplots(figsize=(7, 4))
    for p, label in zip(profiles, labels):
        t = list(p.times) + [p.period]
        b = list(p.bytes) + [p.bytes[-1]]
        ax.step(t, np.asarray(b) / 2**20, where="post", lw=1.4, label=label)
        for name, when in p.marks.items():
            ax.axvline(when, color="grey", ls=":", lw=0.8)
            ax.annotate(name.replace("_", " "), (when, 0.98), xycoords=("data", "axes fraction"),
                        fontsize=7, rotation=90, ha="right", va="top", color="grey")
    if budget:
        ax.axhline(budget / 2**20, color="#d62728", ls="--", lw=1, label="budget")
    ax.set_xlabel("seconds from the start of the step")
    ax.set_ylabel("allocated (MiB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110, bbox_inches="tight")
