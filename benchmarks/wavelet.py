"""Wavelet tick-tock: memory and throughput of two waves on the same workers, measured.

Each condition is one launch of 2 x W gloo ranks (W workers; worker w's two ranks pinned to
core w when there are enough cores: the two waves share a device):

* loopback: every rank on 127.0.0.1 (communication costs little);
* a link rate (``--link 100Mbit``; root only, skipped with a message otherwise): each worker
  in its own network namespace (`weft.collectives.emulate.netns`), its two ranks talking over
  the namespace's loopback, the workers over a veth link shaped with tbf to that rate each
  way, so an all-reduce of the gradients takes a time comparable to a step's computation.

Every rank trains an MLP with SGD (no momentum: what a step holds at its peak is weights,
gradient buckets and activations). Figures, per condition:

* memory: on every worker, both waves' allocated bytes over time (each process records its
  allocator's events with `weft.planner.memprofile.AllocationRecorder`; the two timelines are
  summed on the shared wall clock), peak over the measured steps; tick-tock (the tock wave
  starts when the tick wave is `--signal-at` into its backward: by default at its end)
  against the same two waves gang-launched (target <= 0.8x), and against one wave with the
  summed batch. Tick-tock's gradient buckets live in memory shared by the worker's waves,
  which the allocator does not see: their bytes are added to each of its ranks' timelines;
* throughput: samples/s of tick-tock (2 x W ranks, per-rank batch b) against one wave with the
  same total batch (W ranks, per-rank batch 2b), models built and warmed up before the clock
  starts, rounds alternated, median and range (target >= 1.0x); the same for tick-tock with
  the worker's waves combining their gradients through gloo messages (``local="gloo"``)
  instead of the worker's shared memory, and with ``combine="each"`` (every wave
  all-reduces its own gradients across workers);
* the largest total batch that fits a memory cap (default: what one wave with batch 2b per
  worker needs): peaks measured at two batch sizes per way of running, a line through them,
  and tick-tock then measured at its largest batch (shrunk and measured again if over); with
  the default cap, the throughput of tick-tock at that batch against one wave at 2b (the
  largest it fits);
* the offset planner's combined peak for two copies of one wave's measured step, for
  comparison with the measured tick-tock; the time of one all-reduce of the gradients across
  the workers, and of one wave's step.

    python benchmarks/wavelet.py [--quick] [--json out.json] [--workers 2] [--batch 2048]
                                 [--link loopback --link 100Mbit] [--signal-at 1]
                                 [--cap 200MiB] [--plot memory.png]

The full run measures loopback and 100Mbit; --quick loopback only (each --link replaces the
default list).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.distributed as dist
from _common import emit, figure, parser
from _wavelet_links import bits as _bits
from _wavelet_links import link_cluster as _link_cluster
from _wavelet_links import plot_memory as _plot
from _wavelet_links import rate_arg as _rate_arg
from torch import nn


def _net(cfg):
    torch.manual_seed(0)
    layers, d = [], cfg["d_in"]
    for _ in range(cfg["depth"]):
        layers += [nn.Linear(d, cfg["width"]), nn.ReLU()]
        d = cfg["width"]
    return nn.Sequential(*layers, nn.Linear(d, 10))


def _batch(b, cfg, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, cfg["d_in"], generator=g), torch.randint(0, 10, (b,), generator=g)


def _steps(model, opt, x, y, n, rec=None):
    for _ in range(n):
        if rec is not None:
            rec.mark("step")
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if rec is not None:
        rec.mark("end")


def _train(cfg, how, b, n, rec=None, one_group=None) -> int:
    """Build and train (n steps) one way of running (see `_build`); the bytes of its gradient
    buckets in shared memory (which the allocator does not see)."""
    model, opt, x, y = _build(cfg, how, b, one_group)
    _steps(model, opt, x, y, n, rec)
    shared = getattr(model, "shared_bytes", 0)
    if how != "one":
        model.close()   # its process groups too: each idle gloo group's thread costs CPU
    return shared


def _build(cfg, how, b, one_group):
    """(model, optimizer, x, y) of one way of running: 'ticktock' / 'gang' (every rank, batch
    b; Wavelet's default way of combining the waves' gradients: the last wave sums them from
    the worker's shared memory), 'gloo' (tick-tock, the worker's waves combining through gloo
    messages instead), 'each' (tick-tock with combine="each") or 'one' (wave 0's ranks only,
    batch b, DataParallel over them)."""
    from weft.collectives.communicator import TorchCommunicator
    from weft.parallel import DataParallel
    from weft.parallel.wavelet import Wavelet

    rank = dist.get_rank()
    net = _net(cfg)
    if how == "one":
        model = DataParallel(net, communicator=TorchCommunicator(one_group))
    else:
        kw = {"each": {"combine": "each"}, "gloo": {"local": "gloo"}}.get(how, {})
        model = Wavelet(net, waves=2, stagger=how != "gang", signal_at=cfg["signal_at"], **kw)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = _batch(b, cfg, seed=rank)
    return model, opt, x, y


def _memory(cfg, how, b, one_group):
    """This rank's allocated-bytes timeline (ns, bytes) and the measured window."""
    from weft.planner.memprofile import AllocationRecorder

    wave = dist.get_rank() // (dist.get_world_size() // 2)
    if how == "one" and wave == 1:
        dist.barrier()
        return None
    with AllocationRecorder() as rec:
        shared = _train(cfg, how, b, cfg["warm"] + cfg["steps"], rec, one_group)
    dist.barrier()
    t, v = rec.timeline()
    v = v + shared   # the buckets in shared memory are held for the whole step
    steps = rec.marks["step"]
    return {"t": t, "bytes": v, "start": steps[cfg["warm"]], "end": rec.marks["end"][0],
            "steps": steps[cfg["warm"]:] + rec.marks["end"]}


def _rate(cfg, how, b, one_group):
    """Seconds for cfg['steps'] steps of a model built and warmed up (cfg['warm'] steps)
    before the clock starts, between barriers."""
    wave = dist.get_rank() // (dist.get_world_size() // 2)
    runs = not (how == "one" and wave == 1)
    if runs:
        model, opt, x, y = _build(cfg, how, b, one_group)
        _steps(model, opt, x, y, cfg["warm"])
    dist.barrier()
    t0 = time.perf_counter()
    if runs:
        _steps(model, opt, x, y, cfg["steps"])
        if how != "one":
            model.finish()
    dist.barrier()
    took = time.perf_counter() - t0
    if runs and how != "one":
        model.close()   # after the clock: its groups would slow every later round
    return took


# the ways of running timed, alternated in every round; "capped": tick-tock at the largest total
# batch measured to fit the memory cap (one wave's largest is 2b when the cap is its peak there)
RATED = ("ticktock", "gloo", "each", "one", "capped")


def _worker(cfg):
    world = dist.get_world_size()
    n = world // 2
    wave, worker = divmod(dist.get_rank(), n)
    if cfg["pin"]:
        os.sched_setaffinity(0, {worker % os.cpu_count()})
    one_group = dist.new_group(list(range(n)))
    b = cfg["batch"]
    out = {"wave": wave, "worker": worker, "mem": {}, "rate": {h: [] for h in RATED}}
    for per_wave in (b // 2, b):
        for how in ("ticktock", "gang"):
            out["mem"][(how, 2 * per_wave)] = _memory(cfg, how, per_wave, one_group)
        out["mem"][("one", 2 * per_wave)] = _memory(cfg, "one", 2 * per_wave, one_group)
    out.update(_largest(cfg, out, one_group))
    batch = {"ticktock": b, "gloo": b, "each": b, "one": 2 * b,
             "capped": out["tries"][-1][0] // 2}
    for _ in range(cfg["rounds"]):
        for how in RATED:
            out["rate"][how].append(_rate(cfg, "ticktock" if how == "capped" else how,
                                          batch[how], one_group))
    out["allreduce"] = _allreduce_time(cfg, one_group)
    return out


def _largest(cfg, out, one_group):
    """The largest total batch per worker under the cap for each way of running (a line
    through two measured peaks), tick-tock then measured there (adds to out['mem'])."""
    world, b, wave, worker = dist.get_world_size(), cfg["batch"], out["wave"], out["worker"]
    # every rank sees every timeline, so all agree on the largest batch to verify
    everyone = [None] * world
    dist.all_gather_object(everyone, {k: out[k] for k in ("wave", "worker", "mem")})
    cap = cfg["cap"] or _peaks(everyone, "one", 2 * b)
    totals = (b, 2 * b)
    largest = {h: _line_max(totals, [_peaks(everyone, h, t) for t in totals], cap)
               for h in ("ticktock", "gang", "one")}
    # measure tick-tock at the line's largest batch; if it does not fit, shrink and re-measure
    big = max(2, min(largest["ticktock"], 64 * b) // 2 * 2)
    tries = []
    for _ in range(3):
        out["mem"][("ticktock", big)] = mine = _memory(cfg, "ticktock", big // 2, one_group)
        dist.all_gather_object(everyone, {"wave": wave, "worker": worker,
                                          "mem": {("ticktock", big): mine}})
        peak = _peaks(everyone, "ticktock", big)
        tries.append((big, peak))
        if peak <= cap:
            break
        big = max(2, int(big * cap / peak * 0.99) // 2 * 2)
    return {"cap": cap, "largest": largest, "tries": tries}


def netns_worker(cfg):
    """`_worker` as a rank of `NetnsCluster.run` (which calls it with keyword arguments)."""
    return _worker(cfg)


def _allreduce_time(cfg, one_group, reps=3):
    """Median seconds of one all-reduce of the model's gradient size across the workers
    (one wave's ranks), the communication each wave's step carries."""
    n = sum(p.numel() for p in _net(cfg).parameters())
    x = torch.ones(n)
    wave = dist.get_rank() // (dist.get_world_size() // 2)
    times = []
    for _ in range(reps + 1):
        dist.barrier()
        t0 = time.perf_counter()
        if wave == 0:
            dist.all_reduce(x, group=one_group)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def combined_peak(timelines) -> float:
    """Peak of the sum of step functions (ns, bytes) over the window all of them cover."""
    start = max(tl["start"] for tl in timelines)
    end = min(tl["end"] for tl in timelines)
    times = np.unique(np.concatenate([tl["t"][(tl["t"] >= start) & (tl["t"] <= end)]
                                      for tl in timelines] + [np.array([start])]))
    total = np.zeros(len(times))
    for tl in timelines:
        idx = np.searchsorted(tl["t"], times, side="right") - 1
        total += np.where(idx >= 0, tl["bytes"][np.clip(idx, 0, None)], 0.0)
    return float(total.max())


def _peaks(results, how, total):
    """Per worker: the peak of its ranks' combined memory; the worst worker's."""
    by_worker = {}
    for r in results:
        tl = r["mem"].get((how, total)) if "mem" in r else r
        if tl is not None:
            by_worker.setdefault(r["worker"], []).append(tl)
    return max(combined_peak(tls) for tls in by_worker.values())


def _line_max(x, y, cap):
    """Largest x (an integer) on the line through the two points (x, y) with y <= cap."""
    slope = (y[1] - y[0]) / (x[1] - x[0])
    if slope <= 0:
        return float("inf")
    return int(x[0] + (cap - y[0]) / slope)


def _planned(results, cfg, bins=128):
    """The offset planner on one wave's measured step (the tick rank of worker 0)."""
    from weft.planner.memprofile import MemoryProfile
    from weft.planner.offsets import plan_offsets

    tl = next(r for r in results if r["wave"] == 0 and r["worker"] == 0)["mem"][
        ("ticktock", 2 * cfg["batch"])]
    s0, s1 = tl["steps"][0], tl["steps"][1]
    inside = (tl["t"] > s0) & (tl["t"] <= s1)
    before = np.searchsorted(tl["t"], s0, side="right") - 1
    prof = MemoryProfile([0.0] + list((tl["t"][inside] - s0) / 1e9),
                         [float(tl["bytes"][before])] + list(tl["bytes"][inside]),
                         (s1 - s0) / 1e9)
    return plan_offsets([prof.bins(bins)] * 2)


def _run(cfg, workers: int, link: float | None) -> list[dict]:
    """Every rank's results: on loopback (weft.launch), or on shaped links (namespaces)."""
    if link is None:
        from weft.launch import launch

        return launch(_worker, 2 * workers, args=(cfg,), timeout=1800)
    from pathlib import Path

    with _link_cluster(workers, link) as cluster:
        return cluster.run(f"{Path(__file__).resolve()}:netns_worker", {"cfg": cfg},
                           timeout=1800, op_timeout=600, per_device=2)


def _figures(results, cfg, label: str) -> tuple[list[dict], str]:
    """The figures of one condition (names start with `label`) and a line on its timing."""
    mib = 2.0 ** 20
    W, b = len(results) // 2, cfg["batch"]
    tt, gang, one = (_peaks(results, h, 2 * b) for h in ("ticktock", "gang", "one"))
    cap, largest, tries = results[0]["cap"], results[0]["largest"], results[0]["tries"]
    big, at_big = tries[-1]
    samples = {"ticktock": 2 * b, "gloo": 2 * b, "each": 2 * b, "one": 2 * b, "capped": big}
    rate = {h: W * samples[h] * cfg["steps"] / np.array(results[0]["rate"][h]) for h in RATED}
    ratios = rate["ticktock"] / rate["one"]
    each = rate["each"] / rate["one"]
    gloo = rate["gloo"] / rate["one"]
    plan = _planned(results, cfg)
    f = [
        figure(f"{label}: memory: tick-tock / gang-launched (2 waves, peak per worker)",
               tt / gang, "x", target=0.8, better="lower"),
        figure(f"{label}: memory: tick-tock, 2 waves", tt / mib, "MiB", better="lower"),
        figure(f"{label}: memory: gang-launched, 2 waves", gang / mib, "MiB", better="lower"),
        figure(f"{label}: memory: one wave, summed batch", one / mib, "MiB", better="lower"),
        figure(f"{label}: memory: tick-tock / one wave, summed batch", tt / one, "x",
               better="lower"),
        figure(f"{label}: planner: 2 offset waves / gang (one wave's measured step)",
               plan.ratio, "x", better="lower"),
        figure(f"{label}: throughput: tick-tock / one wave, same total batch",
               float(np.median(ratios)), "x", target=1.0),
        figure(f"{label}: throughput: tick-tock / one wave, lowest round",
               float(np.min(ratios)), "x"),
        figure(f"{label}: throughput: tick-tock / one wave, highest round",
               float(np.max(ratios)), "x"),
        figure(f"{label}: throughput: tick-tock, every wave all-reduces (combine=each) / one "
               f"wave", float(np.median(each)), "x"),
        figure(f"{label}: throughput: tick-tock, the worker's waves combining through gloo "
               f"(local=gloo) / one wave", float(np.median(gloo)), "x"),
        figure(f"{label}: throughput: tick-tock", float(np.median(rate["ticktock"])),
               "samples/s"),
        figure(f"{label}: throughput: one wave", float(np.median(rate["one"])), "samples/s"),
        figure(f"{label}: all-reduce of the gradients across workers", results[0]["allreduce"]
               * 1e3, "ms", better="lower"),
        figure(f"{label}: one wave's step", float(np.median(results[0]["rate"]["one"]))
               / cfg["steps"] * 1e3, "ms", better="lower"),
    ]
    for how, name in (("ticktock", "tick-tock"), ("one", "one wave"), ("gang", "gang 2 waves")):
        f.append(figure(f"{label}: largest total batch per worker under {cap / mib:.0f} MiB: "
                        f"{name}", largest[how], "samples"))
    f.append(figure(f"{label}: tick-tock at batch {big} (try {len(tries)}): measured peak / cap",
                    at_big / cap, "x", target=1.0, better="lower"))
    if cfg["cap"] is None and at_big <= cap:  # the cap is one wave's peak at total batch 2b
        f.append(figure(f"{label}: throughput under the {cap / mib:.0f} MiB cap: tick-tock at "
                        f"batch {big} / one wave at {2 * b}",
                        float(np.median(rate["capped"] / rate["one"])), "x"))
    step = float(np.median(results[0]["rate"]["one"])) / cfg["steps"]
    return f, (f"{label}: all-reduce of the {_grad_bytes(cfg) / 1e6:.1f} MB gradient across "
               f"workers {results[0]['allreduce'] * 1e3:.0f} ms, one wave's step "
               f"{step * 1e3:.0f} ms")


def _grad_bytes(cfg) -> int:
    return 4 * sum(p.numel() for p in _net(cfg).parameters())


def main() -> None:
    from weft.args import nonneg_float, output_file, positive_int, size
    p = parser(__doc__)
    p.add_argument("--workers", type=positive_int, default=2,
                   help="workers (devices); 2 ranks each")
    p.add_argument("--batch", type=positive_int, help="per-rank batch of each wave (default "
                                                      "2048; quick 1024)")
    p.add_argument("--cap", type=size, help="memory cap per worker, e.g. 200MiB (default: one "
                                            "wave's peak with batch 2 x --batch)")
    p.add_argument("--signal-at", type=nonneg_float, default=1.0,
                   help="how far into its backward the tick wave starts the tock wave (0: its "
                        "start, 1: its end; default 1: a worker here computes one wave at a "
                        "time, so starting the tock wave earlier gains no time and only lays "
                        "its peak over the tick wave's remaining activations)")
    p.add_argument("--link", type=_rate_arg, action="append", metavar="RATE",
                   help="a condition to measure: 'loopback' or workers in network namespaces "
                        "on links shaped to RATE each way, e.g. 1Gbit (repeatable; needs root, "
                        f"skipped with a message otherwise; default: loopback and "
                        f"{DEFAULT_LINK}, quick: loopback)")
    p.add_argument("--plot", type=output_file, metavar="PNG",
                   help="draw worker 0's memory over time (the first condition; the others "
                        "beside it as PNG-<condition>.png)")
    p.add_argument("--no-pin", action="store_true", help="do not pin a worker's ranks to a core")
    args = p.parse_args()
    if args.signal_at > 1:
        p.error(f"argument --signal-at: must be in [0, 1], got {args.signal_at:g}")
    links = args.link or ([None] if args.quick else [None, _rate_arg(DEFAULT_LINK)])

    cfg = {"d_in": 256, "width": 512, "depth": 4, "batch": args.batch or (1024 if args.quick
                                                                          else 2048),
           "warm": 1 if args.quick else 2, "steps": 3 if args.quick else 8,
           "rounds": 2 if args.quick else 5,
           "pin": not args.no_pin and (os.cpu_count() or 1) >= args.workers,
           "cap": args.cap}
    cfg["signal_at"] = args.signal_at
    W, b = args.workers, cfg["batch"]
    figures, lines, skipped, t0, load0 = [], [], [], time.time(), os.getloadavg()[0]
    if any(r is not None for r in links):
        from weft.collectives.emulate.netns import available

        ok, why = available()
        if not ok:
            skipped = [_bits(r) for r in links if r is not None]
            print(f"skipping the shaped-link condition(s) {', '.join(skipped)}: {why}")
            links = [r for r in links if r is None]
    for link in links:
        label = "loopback" if link is None else _bits(link)
        t1 = time.time()
        results = _run(cfg, W, link)
        f, line = _figures(results, cfg, label)
        figures += f
        lines.append(f"{line}; {time.time() - t1:.0f} s")
        if args.plot:  # one drawing per condition: PNG, or PNG-<label>.png after the first
            path = args.plot if len(links) == 1 or link == links[0] else \
                args.plot.with_name(f"{args.plot.stem}-{label}{args.plot.suffix}")
            _plot(results, cfg, path)
    cond = (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {W} workers x 2 waves = {2 * W} gloo ranks "
            f"({'each worker pinned to one core' if cfg['pin'] else 'unpinned'}), 1 thread "
            f"each; loopback: every rank on 127.0.0.1; a link rate: each worker in its own "
            f"network namespace, its 2 ranks talking over the namespace's loopback, workers "
            f"over veth links shaped with tbf to that rate each way "
            f"(weft.collectives.emulate.netns); tock starts at {cfg['signal_at']:g} of the "
            f"tick's backward; MLP {cfg['d_in']}-{'-'.join([str(cfg['width'])] * cfg['depth'])}"
            f"-10, SGD without momentum, per-rank batch {b} per wave (one wave: {2 * b}); "
            f"memory: allocator events (c10 CPU allocator via torch.profiler) over "
            f"{cfg['steps']} steps after {cfg['warm']}; throughput: median (and range) of "
            f"{cfg['rounds']} alternated rounds of {cfg['steps']} steps; largest batch: a "
            f"line through the peaks at total batch {b} and {2 * b}, then tick-tock measured "
            f"there (shrunk and re-measured, up to 3 tries, if over the cap); "
            + "".join(f"{x}; " for x in lines)
            + f"{time.time() - t0:.0f} s in all; load average {load0:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores")
    if skipped:
        cond += f"; NOT measured (not root or no namespaces): {', '.join(skipped)}"
    emit(figures, args.json, "Wavelet tick-tock (measured on local processes)", cond)


DEFAULT_LINK = "100Mbit"

if __name__ == "__main__":
    main()
