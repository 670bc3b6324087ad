"""Where each job of an executor round runs: its lease, its partner and its emulated step time.

A packed policy's allocation has pair units ``(a, b)``: two jobs sharing the same
accelerators (``simulator.schedulable_units``). The executor runs both processes at once
on the pair's slots. Memory decides which pairs may share: with a `CoLocation`, pair
units keep an allocation only on accelerator types where ``CoLocation.fits`` (the
simulator's rule: the pair's combined peak, with the best launch offset or gang-launched,
within the type's memory), and a job may start on a slot only when every job already
there is its partner in its own pair unit. A job's step time is
``1 / throughput`` of its unit on the leased type: its isolated throughput alone, the
pair throughput of its side when co-located.

Tick-tock inside a pair (`phased`): the two jobs of a leased pair step on one common
period, the longer of their two step times (the faster job waits at its trough, as a
Wavelet wave does), the second job's steps starting ``CoLocation.launch_offset`` of a
period after the first's: the offset the pair's memory fit was planned with (0 under the
gang rule). The executor lays that on one wall-clock grid for the whole run
(``JobEnv.phase``), so the offset holds whenever either job (re)starts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from weft.cluster.mechanism import Lease, RoundMechanism, Unit


@dataclass(frozen=True)
class Seat:
    """One job's place in a round."""

    job: int
    unit: Unit
    lease: Lease
    step_seconds: float
    phase: tuple[float, float] = ()   # (offset, period) seconds on the run's grid; () alone


def fitting(units: list[Unit], A: np.ndarray, by_id: dict, table, colocation, types: list[str]) -> np.ndarray:
    """``A`` with each pair unit's allocation zeroed on every type where the pair does not fit
    (``colocation.fits``) or has no throughput for one of its jobs."""
    A = A.copy()
    for i, u in enumerate(units):
        if not isinstance(u, tuple):
            continue
        ka, kb = by_id[u[0]].key, by_id[u[1]].key
        rates = table.pair_row(ka, kb, types)
        for j, t in enumerate(types):
            ok = colocation is not None and colocation.fits(ka, kb, table, t)
            if not ok or rates is None or rates[j].min() <= 0:
                A[i, j] = 0.0
    return A


def seats(leases: dict[Unit, Lease], units: list[Unit], rates: list[np.ndarray],
          types: list[str]) -> dict[int, Seat]:
    """Job id -> its seat, from the mechanism's leases and each unit's (types, 2) rates."""
    index = {u: i for i, u in enumerate(units)}
    out = {}
    for u, lease in leases.items():
        r = rates[index[u]][types.index(lease.accel_type)]
        for side, m in enumerate(RoundMechanism.members(u)):
            step = 1.0 / r[side] if r[side] > 0 else float("inf")
            out[m] = Seat(m, u, lease, step)
    return out


def phased(where: dict[int, Seat], by_id: dict, table, colocation) -> dict[int, Seat]:
    """``where`` with a phase on both seats of every pair unit whose jobs are both seated (see
    the module doc); seats of jobs that run alone are returned as they are."""
    out = dict(where)
    for m, seat in where.items():
        if not isinstance(seat.unit, tuple) or m != seat.unit[0] or seat.unit[1] not in where:
            continue
        a, b = seat.unit
        sa, sb = where[a], where[b]
        period = max(sa.step_seconds, sb.step_seconds)
        frac = colocation.launch_offset(by_id[a].key, by_id[b].key, table, seat.lease.accel_type)
        if frac is None or period == float("inf"):
            continue
        out[a] = replace(sa, phase=(0.0, period))
        out[b] = replace(sb, phase=(frac * period, period))
    return out


def may_start(m: int, seat: Seat, occupants: dict[int, set[int]]) -> bool:
    """Whether job ``m`` may start on its seat now: each of its slots is free or holds only
    its partner of the same pair unit (never a job it was not paired with)."""
    if seat.step_seconds == float("inf"):
        return False
    allowed = set(RoundMechanism.members(seat.unit)) - {m}
    return all(occupants.get(w, set()) <= allowed for w in seat.lease.workers)
