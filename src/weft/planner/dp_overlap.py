"""How much of DataParallel's gradient all-reduce hides under the backward, measured.

The plan cost model charges a replicated plan's sync as ``max(total - backward x overlap,
last bucket)`` (`weft.planner.dp_cost.replicated_sync`). `weft.planner.runtime_costs` used
to take ``overlap`` from an all-gather issued around a matmul loop, which is not what a
data-parallel step does, and it jumped between calibrations (0.40 once on 2026-12-03,
0.00-0.09 in the others, where a phase probe of the planner benchmark's dp4 showed its
sync not hidden at all). This measures the step's own mechanism instead: a model of
Linear layers holding about as many parameters as the model planned, wrapped in weft's
DataParallel over every rank (its buckets, its hooks, its communicator), and per round,
the slowest rank's

* ``b``: the backward inside ``no_sync`` (no communication),
* ``a``: the backward that all-reduces the buckets as it makes them and waits for them
  at its end,
* ``c``: ``sync_gradients()`` alone, the same buckets with nothing to hide under;

each round's ``(c - (a - b)) / b`` (the all-reduce time hidden, per second of backward),
median over the rounds, clipped to [0, 1].
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import nn

from weft.planner.measure import slowest_seconds

WIDTH = 256  # the layers' width; their count follows the parameters asked for


def probe_model(numel: int | None, width: int = WIDTH) -> nn.Module:
    """Linear(width, width) layers holding about `numel` parameters (at least 2 layers;
    default 16 of them)."""
    per = width * width + width
    layers = 16 if not numel else max(2, min(256, round(numel / per)))
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh())
                           for _ in range(layers)])


def dp_overlap_rounds(numel: int | None, repeats: int, rows: int = 64) -> dict[str, float]:
    """In every rank: {"dp_backward", "dp_backward_sync", "dp_sync": median seconds,
    "dp_overlap": the median per-round estimate of the module doc}."""
    from weft.collectives.communicator import TorchCommunicator
    from weft.parallel.data import DataParallel

    torch.manual_seed(0)  # over the default group: no group of its own to tear down
    dp = DataParallel(probe_model(numel), communicator=TorchCommunicator(None))
    x = torch.randn(rows, WIDTH)
    ts: dict[str, list[float]] = {"b": [], "a": [], "c": []}
    for r in range(repeats + 1):
        for key in ("b", "a", "c"):
            loss = dp(x).square().mean()
            if key == "b":
                with dp.no_sync():
                    t = slowest_seconds(loss.backward)
            elif key == "a":
                t = slowest_seconds(loss.backward)
            else:
                with dp.no_sync():
                    loss.backward()
                t = slowest_seconds(dp.sync_gradients)
            dp.zero_grad(set_to_none=False)
            if r:
                ts[key].append(t)
    return {"dp_backward": statistics.median(ts["b"]),
            "dp_backward_sync": statistics.median(ts["a"]),
            "dp_sync": statistics.median(ts["c"]),
            "dp_overlap": hidden_fraction(ts["a"], ts["b"], ts["c"])}


def hidden_fraction(synced, alone, sync) -> float:
    """The median over rounds of (sync - (synced - alone)) / alone: the all-reduce time
    hidden per second of backward, from each round's backward with the sync (`synced`),
    without it (`alone`) and the sync by itself (`sync`); clipped to [0, 1]."""
    per = [(c - (a - b)) / max(b, 1e-9) for a, b, c in zip(synced, alone, sync)]
    est = statistics.median(per) if per else 0.0
    return min(max(est, 0.0), 1.0) if math.isfinite(est) else 0.0
