"""Pipeline schedules as data: per rank, an ordered list of actions (`actions.Action`).

A builder first writes each rank's compute-only order (F, B and PipeDream's U) and
`lower` adds the transfers every builder shares: before a forward of chunk c > 0 the
receive of its input from the rank holding chunk c - 1, after it the send of its output
to the rank holding chunk c + 1, and the mirror image around a backward. Chunks are
numbered along the model; with ``v`` chunks per stage (interleaved) chunk c lives on
virtual stage ``c % S``. A virtual stage replicated r times gives micro-batch mb to
replica ``mb % r``.

Kinds: ``gpipe`` (all forwards, then all backwards), ``1f1b`` (1F1B with a
flush), ``interleaved`` (Megatron's interleaved 1F1B, v >= 2 chunks per stage)
and ``pipedream`` (1F1B without flush; each backward is followed by a weight
update, ``U``). `validate_schedule` checks that a schedule (built, or loaded with
`actions.load_csv`) runs every forward and backward once on its rank, in order, with
each transfer between the right ranks; `simulate_pipeline` runs a schedule without
processes: it finds deadlocks and unmatched transfers, and with per-action durations
predicts the makespan and the bubble fraction.
"""

from __future__ import annotations

from typing import Callable

from weft.errors import PlanError
from weft.parallel.pipeline.actions import COMPUTE, TRANSFERS, Action

KINDS = ("gpipe", "1f1b", "interleaved", "pipedream")
SCHEDULES = (*KINDS, "ticktock")   # every kind `compute_order` builds (tick-tock: ticktock.py)


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


def compute_order(kind: str, stage_ranks: list[list[int]], microbatches: int,
                  chunks_per_stage: int = 1) -> dict[int, list[Action]]:
    """Per-rank compute-only action lists (F, B, and U for pipedream) of schedule `kind` on
    virtual stages `stage_ranks[s]` (replicas)."""
    if kind == "ticktock":  # two waves of micro-batches whose memory peaks interleave
        from weft.parallel.pipeline.ticktock import compute_order as ticktock
        return ticktock(stage_ranks, microbatches, chunks_per_stage)
    if kind not in KINDS:
        raise PlanError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
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
    out: dict[int, list[Action]] = {r: [] for reps in stage_ranks for r in reps}
    for s, reps in enumerate(stage_ranks):
        for idx, rank in enumerate(reps):
            for op, m, c in _stage_order(kind, s, S, M, v):
                if m % len(reps) == idx:
                    out[rank].append(Action(op, m, c))
                    if op == "B" and kind == "pipedream":
                        out[rank].append(Action("U", m, c))
    return out


def owner(stage_ranks: list[list[int]], chunk: int, mb: int) -> int:
    """The rank that runs `chunk` for micro-batch `mb`: replica ``mb % r`` of virtual stage
    ``chunk % S``."""
    reps = stage_ranks[chunk % len(stage_ranks)]
    return reps[mb % len(reps)]


def lower(compute: dict[int, list[Action]], stage_ranks: list[list[int]],
          chunks_per_stage: int = 1) -> dict[int, list[Action]]:
    """A compute-only schedule with its transfers added (see the module doc): RECV_F before
    and SEND_F after a forward, RECV_B before and SEND_B after a backward, with the peers
    `owner` gives; U and any transfers already there are kept as they are."""
    C = len(stage_ranks) * chunks_per_stage
    out: dict[int, list[Action]] = {}
    for rank, acts in compute.items():
        full = out[rank] = []
        for a in acts:
            m, c = a.mb, a.chunk
            if a.kind == "F":
                if c > 0:
                    full.append(Action("RECV_F", m, c, owner(stage_ranks, c - 1, m)))
                full.append(a)
                if c < C - 1:
                    full.append(Action("SEND_F", m, c, owner(stage_ranks, c + 1, m)))
            elif a.kind == "B":
                if c < C - 1:
                    full.append(Action("RECV_B", m, c, owner(stage_ranks, c + 1, m)))
                full.append(a)
                if c > 0:
                    full.append(Action("SEND_B", m, c, owner(stage_ranks, c - 1, m)))
            else:
                full.append(a)
    return out


def build_schedule(kind: str, stage_ranks: list[list[int]], microbatches: int,
                   chunks_per_stage: int = 1) -> dict[int, list[Action]]:
    """Per-rank action lists for `kind` on virtual stages `stage_ranks[s]` (replicas):
    `compute_order`, lowered to sends and receives by `lower`."""
    compute = compute_order(kind, stage_ranks, microbatches, chunks_per_stage)
    return lower(compute, stage_ranks, chunks_per_stage)


def validate_schedule(schedule: dict[int, list[Action]], stage_ranks: list[list[int]],
                      microbatches: int, chunks_per_stage: int = 1) -> dict:
    """Check that `schedule` runs the pipeline `stage_ranks` x `microbatches` (x chunks per
    stage) as the runtime executes it: every rank of the plan and no other; every action at
    most once, on the rank `owner` gives; each forward and backward of every (micro-batch,
    chunk) and each send they need present; an action only after what it needs on its rank
    (F after the receive of its input, B after its F and the receive of its gradient, a send
    after what it sends, U after its B); every transfer to or from the owner of the
    neighbouring chunk; then `simulate_pipeline` (no deadlock, every send received).
    Returns the simulation; raises PlanError naming the rank and the action."""
    C = len(stage_ranks) * chunks_per_stage
    ranks = sorted(r for reps in stage_ranks for r in reps)
    if sorted(schedule) != ranks:
        raise PlanError(f"schedule has ranks {sorted(schedule)}; the plan has {ranks}")
    seen: set[tuple] = set()
    for rank, acts in schedule.items():
        for k, a in enumerate(acts):
            where = f"rank {rank}, action {k} ({a})"
            m, c = a.mb, a.chunk
            if not (0 <= c < C and 0 <= m < microbatches):
                raise PlanError(f"{where}: chunk or micro-batch out of range (chunks 0..{C - 1},"
                                f" micro-batches 0..{microbatches - 1})")
            if owner(stage_ranks, c, m) != rank:
                raise PlanError(f"{where}: chunk {c} of micro-batch {m} runs on rank "
                                f"{owner(stage_ranks, c, m)}")
            if a.kind in TRANSFERS:
                nb = c - 1 if a.kind in ("RECV_F", "SEND_B") else c + 1
                if not 0 <= nb < C or a.peer != owner(stage_ranks, nb, m):
                    raise PlanError(f"{where}: chunk {nb} of micro-batch {m} is not on rank "
                                    f"{a.peer}")
            if (a.kind, m, c) in seen:
                raise PlanError(f"{where}: appears twice")
            for need in _needs(a, stage_ranks, C):
                if need[:3] not in seen:
                    raise PlanError(f"{where}: comes before {need}, which it needs")
            seen.add((a.kind, m, c))
    wanted = [_action(k, m, c, stage_ranks) for m in range(microbatches) for c in range(C)
              for k, ok in (("F", True), ("B", True), ("SEND_F", c < C - 1), ("SEND_B", c > 0))
              if ok]
    missing = [a for a in wanted if a[:3] not in seen]
    if missing:
        raise PlanError(f"schedule never runs {', '.join(map(str, missing[:4]))}"
                        f"{' ...' if len(missing) > 4 else ''}")
    return simulate_pipeline(schedule)


def _action(kind: str, mb: int, chunk: int, stage_ranks: list[list[int]]) -> Action:
    """The action `kind` of (mb, chunk), with the peer a transfer has in a lowered schedule."""
    if kind in TRANSFERS:
        nb = chunk - 1 if kind in ("RECV_F", "SEND_B") else chunk + 1
        return Action(kind, mb, chunk, owner(stage_ranks, nb, mb))
    return Action(kind, mb, chunk)


def _needs(a: Action, stage_ranks: list[list[int]], C: int) -> list[Action]:
    """The actions that must come before `a` on its rank."""
    m, c = a.mb, a.chunk
    kinds = {"F": ["RECV_F"] if c > 0 else [],
             "B": ["F"] + (["RECV_B"] if c < C - 1 else []),
             "SEND_F": ["F"], "SEND_B": ["B"], "U": ["B"], "RECV_F": [], "RECV_B": []}[a.kind]
    return [_action(k, m, c, stage_ranks) for k in kinds]


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
