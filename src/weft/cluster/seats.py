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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weft.cluster.mechanism import Lease, RoundMechanism, Unit


@dataclass(frozen=True)
class Seat:
    """One job's place in a round."""

    job: int
    unit: Unit
    lease: Lease
    step_seconds: float


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


def may_start(m: int, seat: Seat, occupants: dict[int, set[int]]) -> bool:
    """Whether job ``m`` may start on its seat now: each of its slots is free or holds only
    its partner of the same pair unit (never a job it was not paired with)."""
    if seat.step_seconds == float("inf"):
        return False
    allowed = set(RoundMechanism.members(seat.unit)) - {m}
    return all(occupants.get(w, set()) <= allowed for w in seat.lease.workers)
