"""Probes for benchmarks/pipeline.py: the model, the measured link, solo profiles, recorded
stage times."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn


def model():
    torch.manual_seed(0)
    w = 768
    return nn.Sequential(nn.Linear(64, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                         nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 64), nn.ReLU(),
                         nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def local_topology(bw: float, lat: float):
    from weft.topology.model import Topology

    t = Topology("local-gloo")
    for i in range(2):
        t.add_device(f"cpu{i}", kind="cpu", memory=8 * 2**30, flops=1e11, host="local")
    t.add_link("cpu0", "cpu1", bw, lat)
    return t


def pingpong(rounds: int = 5, reps: int = 15, warmup: int = 3) -> tuple[float, float]:
    """Gloo point-to-point bandwidth and one-way latency on this machine.

    For message sizes from 4 B to 1 MiB, the median one-way time (half a round
    trip) of `reps` round trips after `warmup` unmeasured ones; a least-squares
    line through (bytes, time) gives latency (intercept) and bandwidth (1/slope).
    Repeated `rounds` times; the median of each is kept (rank 0's, broadcast).
    """
    r = dist.get_rank()
    sizes = [1, 2**12, 2**14, 2**16, 2**18]  # float32 elements

    def one_way(buf) -> float:
        times = []
        for k in range(warmup + reps):
            t0 = time.perf_counter()
            if r == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            if k >= warmup:
                times.append((time.perf_counter() - t0) / 2)
        return float(np.median(times))

    lats, bws = [], []
    for _ in range(rounds):
        dist.barrier()
        t = [one_way(torch.zeros(n)) for n in sizes]
        slope, icpt = np.polyfit([4.0 * n for n in sizes], t, 1)
        bws.append(1.0 / slope if slope > 0 else 4.0 * sizes[-1] / t[-1])
        lats.append(icpt if icpt > 0 else t[0])
    res = torch.tensor([float(np.median(lats)), float(np.median(bws))], dtype=torch.float64)
    dist.broadcast(res, 0)
    return float(res[1]), float(res[0])


def timed(fn, steps: int) -> float:
    """Seconds for `fn(steps)` on every rank, between two barriers."""
    dist.barrier()
    t0 = time.perf_counter()
    fn(steps)
    dist.barrier()
    return time.perf_counter() - t0


def profile_on_ranks(mb):
    """The MLP's solo profile averaged over the ranks (see `solo_profile`)."""
    return solo_profile(model, torch.randn(mb, 64), repeats=10)


def solo_profile(model_fn, sample, repeats):
    """Profile on every rank, one rank at a time (the others wait in a barrier), average the
    times: each rank's solo layer times, what `contention` divides by. 'min': the
    uncontended layer times, as the runs report their best repetition."""
    from dataclasses import replace

    from weft.planner import ModelProfile, profile_model

    for r in range(dist.get_world_size()):
        dist.barrier()
        if r == dist.get_rank():
            prof = profile_model(model_fn(), sample, repeats=repeats, use_cache=False, threads=1,
                                 statistic="min")
    dist.barrier()
    allp = [None] * dist.get_world_size()
    dist.all_gather_object(allp, prof.to_dict())
    profs = [ModelProfile.from_dict(d) for d in allp]
    layers = [replace(l, forward_s=float(np.mean([p.layers[i].forward_s for p in profs])),
                      backward_s=float(np.mean([p.layers[i].backward_s for p in profs])))
              for i, l in enumerate(prof.layers)]
    return ModelProfile(layers, prof.batch_size, prof.input_bytes, prof.input_shape, prof.dtype,
                        prof.meta, prof.shared)


def torch_1f1b(part, stage_index, num_stages, microbatches, loss_fn, x, y):
    """torch.distributed.pipelining's Schedule1F1B running `part` as stage `stage_index`;
    returns run(k): k training steps (SGD, lr 0.01)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    stage = PipelineStage(part, stage_index, num_stages, torch.device("cpu"))
    sched = Schedule1F1B(stage, n_microbatches=microbatches, loss_fn=loss_fn)
    opt = torch.optim.SGD(part.parameters(), lr=0.01)

    def run(k):
        for _ in range(k):
            if stage_index == 0:
                sched.step(x)
            else:
                sched.step(target=y)
            opt.step()
            opt.zero_grad()

    return run


def stage_times(pipe, x, y, steps):
    """Median F and B seconds per micro-batch on this rank, from a recorded run, and the
    median time per schedule action spent outside F, B and blocked receives."""
    pipe.record, ev, other = True, [], []
    n = len(pipe.schedule()[dist.get_rank()])
    for _ in range(steps):
        pipe.events = []
        t0 = time.perf_counter()
        pipe.step(x, y)
        dt = time.perf_counter() - t0
        ev += pipe.events
        other.append((dt - sum(e[5] - e[4] for e in pipe.events if e[1] in ("F", "B", "wait")))
                     / n)
    pipe.record = False
    med = lambda k: float(np.median([e[5] - e[4] for e in ev if e[1] == k]))  # noqa
    return {"F": med("F"), "B": med("B"), "other": float(np.median(other))}
