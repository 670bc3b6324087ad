"""Pipeline schedules as data: per rank, an ordered list of actions.

An action is ``F`` (forward of micro-batch ``mb`` through model chunk
``chunk``), ``B`` (its backward), or a transfer: ``SEND_F``/``RECV_F`` (the
activation leaving/entering a chunk) and ``SEND_B``/``RECV_B`` (the gradient
going back). Transfers name their ``peer`` rank. Chunks are numbered along the
model; with ``v`` chunks per stage (interleaved) chunk c lives on virtual stage
``c % S``. A virtual stage replicated r times gives micro-batch mb to replica
``mb % r``.

Kinds: ``gpipe`` (all forwards, then all backwards), ``1f1b`` (1F1B with a
flush), ``interleaved`` (Megatron's interleaved 1F1B, v >= 2 chunks per stage)
and ``pipedream`` (1F1B without flush; each backward is followed by a weight
update, ``U``). `simulate_pipeline` runs a schedule without processes: it finds
deadlocks and unmatched transfers, and with per-action durations predicts the
makespan and the bubble fraction.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from weft.errors import PlanError

KINDS = ("gpipe", "1f1b", "interleaved", "pipedream")
COMPUTE = ("F", "B")


class Action(NamedTuple):
    kind: str  # F, B, U, SEND_F, RECV_F, SEND_B, RECV_B
    mb: int
    chunk: int
    peer: int = -1

    def __repr__(self) -> str:
        peer = f"@{self.peer}" if self.peer >= 0 else ""
        return f"{self.kind}{self.mb}.{self.chunk}{peer}"


def _stage_order(kind: str, s: int, S: int, M: int, v: int) -> list[tuple[str, int, int]]:
    """Compute ops (kind, mb, chunk) of virtual stage s, before replication."""
    if kind == "gpipe":
        return [("F", m, s) for m in range(M)] + [("B", m, s) for m in range(M)]
    if kind in ("1f1b", "pipedream"):
        fwd = [(m, s) for m in range(M)]
        bwd = [(m, s) for m in range(M)]
        warm = min(S - s - 1, M)
    else:  # interleaved (Megatron): groups of S micro-batches per chunk
        n = M * v

        def mb_of(k):
            return (k // (S * v)) * S + k % S

        fwd = [(mb_of(k), ((k // S) % v) * S + s) for k in range(n)]
        bwd = [(mb_of(k), (v - 1 - (k // S) % v) * S + s) for k in range(n)]
        warm = min((S - s - 1) * 2 + (v - 1) * S, n)
    ops = [("F", *f) for f in fwd[:warm]]
    fi = warm
    for bi in range(len(bwd)):
        if fi < len(fwd):
            ops.append(("F", *fwd[fi]))
            fi += 1
        ops.append(("B", *bwd[bi]))
    return ops


def build_schedule(kind: str, stage_ranks: list[list[int]], microbatches: int,
                   chunks_per_stage: int = 1) -> dict[int, list[Action]]:
    """Per-rank action lists for `kind` on virtual stages `stage_ranks[s]` (replicas)."""
    if kind not in KINDS:
        raise PlanError(f"unknown schedule {kind!r}; choose one of {', '.join(KINDS)}")
    S, M, v = len(stage_ranks), microbatches, chunks_per_stage
    if M < 1:
        raise PlanError(f"need at least one micro-batch, got {M}")
    if kind == "interleaved":
        if v < 2:
            raise PlanError("interleaved 1F1B needs chunks_per_stage >= 2")
        if M % S:
            raise PlanError(f"interleaved 1F1B needs micro-batches ({M}) divisible by the "
                            f"number of stages ({S})")
        if any(len(r) > 1 for r in stage_ranks):
            raise PlanError("interleaved 1F1B does not support replicated stages")
    elif v != 1:
        raise PlanError(f"schedule {kind!r} runs one chunk per stage, got {v}")
    C = S * v

    def owner(c: int, m: int) -> int:
        reps = stage_ranks[c % S]
        return reps[m % len(reps)]

    out: dict[int, list[Action]] = {r: [] for reps in stage_ranks for r in reps}
    for s, reps in enumerate(stage_ranks):
        for idx, rank in enumerate(reps):
            acts = out[rank]
            for op, m, c in _stage_order(kind, s, S, M, v):
                if m % len(reps) != idx:
                    continue
                if op == "F":
                    if c > 0:
                        acts.append(Action("RECV_F", m, c, owner(c - 1, m)))
                    acts.append(Action("F", m, c))
                    if c < C - 1:
                        acts.append(Action("SEND_F", m, c, owner(c + 1, m)))
                else:
                    if c < C - 1:
                        acts.append(Action("RECV_B", m, c, owner(c + 1, m)))
                    acts.append(Action("B", m, c))
                    if c > 0:
                        acts.append(Action("SEND_B", m, c, owner(c - 1, m)))
                    if kind == "pipedream":
                        acts.append(Action("U", m, c))
    return out


def message_key(a: Action, rank: int) -> tuple:
    """(src, dst, direction, mb, receiving chunk) - identical on both ends of a transfer."""
    if a.kind == "SEND_F":
        return (rank, a.peer, "F", a.mb, a.chunk + 1)
    if a.kind == "RECV_F":
        return (a.peer, rank, "F", a.mb, a.chunk)
    if a.kind == "SEND_B":
        return (rank, a.peer, "B", a.mb, a.chunk - 1)
    if a.kind == "RECV_B":
        return (a.peer, rank, "B", a.mb, a.chunk)
    raise ValueError(a)


def simulate_pipeline(schedule: dict[int, list[Action]],
             duration: Callable[[int, Action], float] | None = None,
             transfer: Callable[[int, Action], float] | None = None) -> dict:
    """Run `schedule` as-soon-as-possible: sends never block, a receive waits for its send.

    Raises PlanError on a deadlock or an unmatched transfer. Returns the makespan,
    per-rank busy time, the bubble fraction and per-action (start, end) times.
    """
    duration = duration or (lambda r, a: 1.0 if a.kind in COMPUTE else 0.0)
    transfer = transfer or (lambda r, a: 0.0)
    sends, recvs = {}, set()
    for r, acts in schedule.items():
        for a in acts:
            if a.kind.startswith(("SEND", "RECV")):
                key = message_key(a, r)
                (recvs.add(key) if a.kind.startswith("RECV") else sends.__setitem__(key, None))
    if set(sends) != recvs:
        bad = sorted(set(sends) ^ recvs)[:4]
        raise PlanError(f"schedule has unmatched transfers (src, dst, dir, mb, chunk): {bad}")
    pc = {r: 0 for r in schedule}
    clock = {r: 0.0 for r in schedule}
    busy = {r: 0.0 for r in schedule}
    times: dict[int, list[tuple[float, float]]] = {r: [] for r in schedule}
    arrived: dict[tuple, float] = {}
    remaining = sum(len(a) for a in schedule.values())
    while remaining:
        progress = False
        for r, acts in schedule.items():
            while pc[r] < len(acts):
                a = acts[pc[r]]
                start = clock[r]
                if a.kind.startswith("RECV"):
                    key = message_key(a, r)
                    if key not in arrived:
                        break
                    start = max(start, arrived[key])
                end = start + duration(r, a)
                if a.kind.startswith("SEND"):
                    arrived[message_key(a, r)] = end + transfer(r, a)
                if a.kind in COMPUTE or a.kind == "U":
                    busy[r] += end - start
                times[r].append((start, end))
                clock[r] = end
                pc[r] += 1
                remaining -= 1
                progress = True
        if not progress:
            stuck = {r: schedule[r][pc[r]] for r in schedule if pc[r] < len(schedule[r])}
            raise PlanError(f"schedule deadlocks: ranks wait on {stuck}")
    makespan = max(clock.values()) if clock else 0.0
    total = makespan * len(schedule)
    return {"makespan": makespan, "busy": busy, "times": times,
            "bubble": 1 - sum(busy.values()) / total if total > 0 else 0.0}
