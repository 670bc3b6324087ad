"""Alpha-beta cost model with link contention, and max-flow lower bounds.

The executor runs piece p's step s at time p + s, every rank waiting for its
own transfers of a time step before the next. The model follows that: the
time of one time step is the largest, over physical links, of the bytes that
the step's transfers put on the link divided by its bandwidth (contention:
transfers sharing a link share its bandwidth), plus a per-message overhead
times the most messages any rank handles in the step, plus the longest route
latency, plus the time to add received data (reduce) at `reduce_bw`. A link with a
burst (`Fabric.burst`: the emulation's token-bucket shapers) passes a step's bytes
within its credit at once; the credit refills at the link's rate up to the burst.

The executor's CPU cost (`CostParams`): `alpha` per message at each end (Python,
gloo, the socket calls), `copy_bw` per byte sent or received (the kernel's copies),
`forward_bw` per byte per host a message is forwarded through (emulated clusters,
where hosts route in software) and `step_overhead` per time step and rank; with
`cores` > 0 every rank (and forwarding host) shares that many cores, so a time step
costs at least the whole step's CPU work spread over them. With `overlap` a time
step costs the larger of its link time and its CPU time (the dataflow executor moves
one piece while it handles another's messages) instead of their sum. `fit` finds the
CPU parameters from measured runs (`weft.collectives.costmodel.fit`), so the autotuner
ranks candidates right where the CPU, not the links, is the limit.

`scales` corrects what one set of those terms does not fit: a factor on the predicted
time per algorithm and regime, a message sent whole (one piece per segment) or
pipelined in pieces (`regime`). On 4 local gloo ranks sharing 2 cores (2026-12-02) one
set of CPU terms, fitted to one-piece runs alone, still under-predicted the flat tree's
(all bytes through one rank) by 20-31% and over-predicted the ring's by up to 22%;
`fit(..., per_regime=True)` fits the factors from the samples' own residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weft.collectives.fabric import Fabric
from weft.collectives.packing import broadcast_bound, pack, reduce_bound
from weft.collectives.schedule import Schedule, segment_range


@dataclass(frozen=True)
class CostParams:
    alpha: float = 5e-6  # seconds of software overhead per message (send or receive)
    reduce_bw: float = 200e9  # bytes/s a rank adds received data into its copy (GPU-like)
    step_overhead: float = 2e-6  # seconds per time step per rank (bookkeeping)
    cores: float = 0.0  # >0: all ranks share this many CPU cores (one-machine emulation)
    link_efficiency: float = 1.0  # fraction of a link's rate that transfers reach (TCP: ~0.93)
    copy_bw: float = 0.0  # >0: bytes/s a rank copies to send or receive (one host: kernel copies)
    forward_bw: float = 0.0  # >0: bytes/s a host's CPU forwards a message it relays (emulation)
    overlap: bool = False  # a time step costs max(link, CPU) instead of link + CPU
    # ((key, factor), ...): predicted time x factor for runs of that `regime` key
    # ("ring/whole", "packing:4/pieces") or, failing that, of its family ("packing/whole")
    scales: tuple[tuple[str, float], ...] = ()

    def scale(self, algorithm: str, pieces: int) -> float:
        """The factor on a run of `algorithm` in `pieces` pieces per segment (1.0 if none)."""
        if not self.scales:
            return 1.0
        table = dict(self.scales)
        for key in regime_keys(algorithm, pieces):
            if key in table:
                return table[key]
        return 1.0


def family(algorithm: str) -> str:
    """An algorithm's family: "packing:4" -> "packing"; "ring", "dbtree", "flat" as is."""
    return algorithm.partition(":")[0]


def regime_keys(algorithm: str, pieces: int) -> tuple[str, str]:
    """The keys of `CostParams.scales` for a run, most specific first: the algorithm
    ("packing:4") and its family ("packing"), each with "/whole" (one piece per segment)
    or "/pieces" (pipelined)."""
    regime = "whole" if pieces <= 1 else "pieces"
    return f"{algorithm}/{regime}", f"{family(algorithm)}/{regime}"


def pieces_for(schedule: Schedule, nbytes: int, chunk_bytes: int) -> int:
    """Pieces per segment so that the largest piece is about `chunk_bytes`."""
    if not schedule.segments or nbytes <= 0:
        return 1
    biggest = max(s.hi - s.lo for s in schedule.segments) * nbytes
    if any(s.shard is not None for s in schedule.segments):
        biggest /= schedule.nranks
    return max(1, int(np.ceil(biggest / max(1, chunk_bytes))))


def _step_loads(schedule: Schedule, fabric: Fabric, numel: int, itemsize: int, links: dict):
    """Per schedule step: bytes per link (vector), max messages per rank, max
    latency, max reduced bytes per rank -- for the whole segments."""
    n = schedule.nranks
    seg_bytes = [(b - a) * itemsize for a, b in
                 (segment_range(sg, numel, n) for sg in schedule.segments)]
    out = []
    for step in schedule.steps:
        load = np.zeros(len(links))
        msgs = np.zeros(n)
        nmsg = 0
        red = np.zeros(n)
        cp = np.zeros(n)
        lat = 0.0
        fwd = 0.0
        for t in step:
            b = seg_bytes[t.seg]
            if b == 0:
                continue
            route = fabric.route(t.src, t.dst)
            fwd += b * (len(route) - 1)
            for e in route:
                load[links[e]] += b
            msgs[t.src] += 1
            msgs[t.dst] += 1
            nmsg += 2
            cp[t.src] += b
            cp[t.dst] += b
            if t.reduce:
                red[t.dst] += b
            lat = max(lat, fabric.latency(t.src, t.dst))
        out.append((load, msgs.max(initial=0), red.max(initial=0), lat, nmsg, red.sum(),
                    cp.max(initial=0), cp.sum(), fwd))
    return out


def predict(schedule: Schedule, fabric: Fabric, nbytes: int, chunk_bytes: int = 1 << 20,
            params: CostParams = CostParams(), itemsize: int = 4) -> float:
    """Predicted seconds to run `schedule` on `nbytes` with pieces of ~`chunk_bytes`."""
    if fabric.n != schedule.nranks:
        raise ValueError(f"schedule has {schedule.nranks} ranks, fabric {fabric.n}")
    if schedule.nsteps == 0 or nbytes <= 0:
        return 0.0
    numel = max(1, nbytes // itemsize)
    links = {e: i for i, e in enumerate(sorted({e for r in fabric.routes.values() for e in r}))}
    caps = np.array([fabric.capacity(e) for e in links]) * params.link_efficiency
    p = pieces_for(schedule, nbytes, chunk_bytes)
    per = _step_loads(schedule, fabric, numel, itemsize, links)
    loads = np.array([x[0] for x in per]) / p  # (steps, links) for one piece
    msgs = np.array([x[1] for x in per])
    red = np.array([x[2] for x in per]) / p
    lat = np.array([x[3] for x in per])
    allmsg = np.array([x[4] for x in per], dtype=float)
    allred = np.array([x[5] for x in per]) / p
    copy = 1.0 / params.copy_bw if params.copy_bw > 0 else 0.0
    # per-byte CPU seconds: adding received data, and copying it (when copy_bw > 0)
    red = red / params.reduce_bw + np.array([x[6] for x in per]) / p * copy
    allred = allred / params.reduce_bw + np.array([x[7] for x in per]) / p * copy
    if params.forward_bw > 0:
        allred = allred + np.array([x[8] for x in per]) / p / params.forward_bw
    s = len(per)
    total = 0.0
    # Time step k runs schedule steps max(0, k-p+1) .. min(k, s-1), each for one piece.
    cum = np.vstack([np.zeros(len(links)), np.cumsum(loads, axis=0)])
    cm, cr = np.concatenate([[0], np.cumsum(msgs)]), np.concatenate([[0], np.cumsum(red)])
    ca, car = np.concatenate([[0], np.cumsum(allmsg)]), np.concatenate([[0], np.cumsum(allred)])
    # token-bucket shapers (the emulation's tbf): a link holds up to `burst` bytes of
    # credit, refilled at its rate, and a step's bytes within the credit pass at once
    burst = np.array([fabric.burst(e) for e in links])
    credit = burst.copy() if burst.any() else None
    for k in range(p + s - 1):
        lo, hi = max(0, k - p + 1), min(k, s - 1) + 1
        load = cum[hi] - cum[lo]
        over = load if credit is None else np.maximum(load - credit, 0.0)
        link_t = float((over / caps).max(initial=0.0))
        cpu = (cm[hi] - cm[lo]) * params.alpha + (cr[hi] - cr[lo])
        if params.cores > 0:  # ranks share cores: the whole step's CPU work, spread over them
            cpu = max(cpu, ((ca[hi] - ca[lo]) * params.alpha + (car[hi] - car[lo])
                            + fabric.n * params.step_overhead) / params.cores)
        work = max(link_t, cpu) if params.overlap else link_t + cpu
        step = work + lat[lo:hi].max(initial=0.0) + params.step_overhead
        if credit is not None:
            credit = np.clip(credit + step * caps - load, 0.0, burst)
        total += step
    return total * params.scale(schedule.algorithm, p)


FIT = ("alpha", "copy_bw", "forward_bw", "step_overhead")


def fit(samples, base: CostParams = CostParams(), free=FIT,
        per_regime: bool = False) -> tuple[CostParams, float]:
    """CPU parameters that best predict measured runs: `samples` are (schedule, fabric,
    nbytes, chunk_bytes, seconds). Least squares on log(predicted / measured) over the
    logs of the `free` fields (bandwidths as seconds per byte; a field may go to zero),
    trying `base.overlap` both ways. With `per_regime`, then `fit_scales`. Returns the
    parameters and their mean |relative error|."""
    from dataclasses import replace

    from scipy.optimize import least_squares

    samples = list(samples)
    if not samples:
        raise ValueError("fit needs at least one measured run")
    if base.scales:
        base = replace(base, scales=())

    def params_of(x, overlap):
        kw = {}
        for name, v in zip(free, x):
            v = float(np.exp(v))
            kw[name] = (1.0 / v if v > 1e-15 else 0.0) if name.endswith("_bw") else v
        return replace(base, overlap=overlap, **kw)

    def start(name):
        v = getattr(base, name)
        if name.endswith("_bw"):
            return np.log(1.0 / v) if v > 0 else np.log(1e-9)
        return np.log(max(v, 1e-7))

    def residuals(x, overlap):
        pr = params_of(x, overlap)
        return [np.log(max(predict(s, f, n, c, pr), 1e-12) / t) for s, f, n, c, t in samples]

    best = None
    for overlap in (False, True):
        x0 = np.array([start(name) for name in free])
        res = least_squares(residuals, x0, args=(overlap,), bounds=(-40.0, 5.0), x_scale=1.0,
                            max_nfev=200)
        err = float(np.mean(np.abs(np.expm1(np.asarray(residuals(res.x, overlap))))))
        if best is None or err < best[1]:
            best = (params_of(res.x, overlap), err)
    return fit_scales(samples, best[0]) if per_regime else best


def fit_scales(samples, params: CostParams, min_samples: int = 2) -> tuple[CostParams, float]:
    """`params` with `scales` fitted to `samples` (as `fit`'s): per regime key of
    `regime_keys` (algorithm and family, whole or in pieces) that at least `min_samples`
    runs have, the geometric mean of measured / predicted (the least-squares factor on
    the log error), predicted without scales. Returns the parameters and their mean
    |relative error| on `samples`."""
    from dataclasses import replace

    samples = list(samples)
    if not samples:
        raise ValueError("fit_scales needs at least one measured run")
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    plain = replace(params, scales=())
    logs: dict[str, list[float]] = {}
    for s, f, n, c, t in samples:
        if t <= 0:
            raise ValueError(f"a measured run of {s.algorithm} on {n} bytes took {t} s, "
                             "not a positive time")
        r = float(np.log(t / max(predict(s, f, n, c, plain), 1e-12)))
        for key in regime_keys(s.algorithm, pieces_for(s, n, c)):
            logs.setdefault(key, []).append(r)
    scales = tuple(sorted((k, float(np.exp(np.mean(v)))) for k, v in logs.items()
                          if len(v) >= min_samples))
    out = replace(plain, scales=scales)
    err = float(np.mean([abs(predict(s, f, n, c, out) / t - 1) for s, f, n, c, t in samples]))
    return out, err


def allreduce_rate_bound(fabric: Fabric) -> float:
    """Best all-reduce rate by trees reduced up and broadcast down at once: the
    optimal fractional spanning-tree packing (Nash-Williams/Tutte), by the LP."""
    return pack(fabric, mode="both", max_trees=10**6).optimum


def lower_bound(collective: str, fabric: Fabric, nbytes: int, root: int = 0) -> float:
    """Max-flow bound (seconds) on moving `nbytes` for the collective.

    broadcast: nbytes / min_v maxflow(root -> v) (Edmonds); reduce: the reverse;
    all-gather / reduce-scatter: every shard (nbytes/n) broadcast from (reduced to)
    its owner, all at once, so at least the slowest owner's shard time and at
    least nbytes*(n-1)/n over any rank's total in/out capacity;
    all-reduce: nbytes over the optimal tree-packing rate (trees used both ways).
    """
    n = fabric.n
    if n == 1 or nbytes <= 0:
        return 0.0
    if collective == "broadcast":
        return nbytes / broadcast_bound(fabric, root)
    if collective == "reduce":
        return nbytes / reduce_bound(fabric, root)
    if collective in ("all_gather", "reduce_scatter"):
        g = fabric.topology.graph
        cut = min(min(sum(d["bandwidth"] for *_, d in g.in_edges(v, data=True)),
                      sum(d["bandwidth"] for *_, d in g.out_edges(v, data=True)))
                  for v in fabric.devices)
        shard = max(nbytes / n / broadcast_bound(fabric, r) for r in range(n))
        return max(shard, nbytes * (n - 1) / n / cut)
    if collective == "allreduce":
        return nbytes / allreduce_rate_bound(fabric)
    raise ValueError(f"unknown collective {collective!r}")
