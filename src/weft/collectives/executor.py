"""Run a schedule over torch.distributed point-to-point (isend/irecv).

Every segment is cut into `pieces` equal pieces; piece p's schedule step s runs
at time step p + s, so consecutive pieces pipeline down trees and around rings
(a tree of half the weight sends pieces of half the size: every time step then
loads the links as the packing's rates do).
Execution is dataflow, not lock-step: each (segment, piece) advances through
its steps as soon as its own previous transfers on this rank are done (a
receive that reduces lands in a scratch buffer and is added afterwards).
Data travels as raw bytes, so any dtype works; the result of every
collective is computed in one place and then copied, so all ranks end with
bit-identical values.
"""

from __future__ import annotations

import datetime
import threading

import torch
import torch.distributed as dist

from weft.collectives.costmodel import pieces_for
from weft.collectives.schedule import Schedule, segment_range, split_points

DEFAULT_CHUNK = 1 << 20
POOL_BYTES = 256 << 20  # scratch kept between calls, per thread
_POOL = threading.local()


def _pool(dtype) -> dict:
    """This thread's reusable receive buffers for `dtype`, by length: fresh ones
    cost page faults and zeroing on every call, as much as the copy itself."""
    pools = getattr(_POOL, "by_dtype", None)
    if pools is None:
        pools = _POOL.by_dtype = {}
    return pools.setdefault(dtype, {})


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype != torch.uint8 else t


def _add(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.dtype == torch.bool:
        dst.logical_or_(src)
    else:
        dst.add_(src)


def execute(schedule: Schedule, tensor: torch.Tensor, group=None,
            chunk_bytes: int = DEFAULT_CHUNK, pieces: int | None = None,
            timeout: float | None = 120.0, window: int | None = None) -> torch.Tensor:
    """Run `schedule` in place on `tensor` (this rank's copy); returns `tensor`.

    Every rank of `group` must call it with the same schedule, shape, dtype and
    chunk size. broadcast: root's data everywhere; reduce: the sum at the root
    (other ranks' copies are left holding partial sums); allreduce: the sum
    everywhere; reduce_scatter: rank r's shard (numpy.array_split of the flat
    tensor) holds the sum on rank r; all_gather: rank r's shard is copied from
    rank r to all. `timeout` bounds the wait for any progress.
    """
    n = dist.get_world_size(group)
    me = dist.get_rank(group)
    if n != schedule.nranks:
        raise ValueError(f"schedule is for {schedule.nranks} ranks but the group has {n}")
    if n == 1 or tensor.numel() == 0 or schedule.nsteps == 0:
        return tensor
    flat = tensor.view(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
    numel, item = flat.numel(), flat.element_size()
    p = pieces or pieces_for(schedule, numel * item, chunk_bytes)
    run = _Run(schedule, flat, me, p, group if group is not None else dist.group.WORLD)
    run.go(window or 2 * schedule.nsteps + 2, timeout)
    if flat.data_ptr() != tensor.data_ptr():
        tensor.copy_(flat.view_as(tensor))
    return tensor


class _Run:
    """Each (segment, piece) is a stream of stages: its schedule steps that involve
    this rank, stage at step s of piece p due at time p + s. Stages are waited for
    in time order (which cannot deadlock: by induction every rank posts all stages
    due before time t), but each stage's successor is posted as soon as the stage
    is done, not when the whole time step is, and pieces' first stages are posted
    up to `window` time steps ahead, so links stay busy."""

    def __init__(self, schedule, flat, me, p, pg):
        # the process group's own send/recv (group ranks): torch.distributed's
        # isend/irecv wrappers cost more Python per message than the rest of a stage
        self.flat, self.pg, self.p, self._me = flat, pg, p, me
        self.u8, self.item = _bytes(flat), flat.element_size()
        n = schedule.nranks
        width = max(len(st) for st in schedule.steps) or 1
        ranges = []
        for sg in schedule.segments:
            a, b = segment_range(sg, flat.numel(), n)
            pts = split_points(b - a, p)
            ranges.append([(a + pts[i], a + pts[i + 1]) for i in range(p)])
        per_seg: dict[int, list] = {}
        for s, st in enumerate(schedule.steps):
            for i, t in enumerate(st):
                if me in (t.src, t.dst):
                    per_seg.setdefault(t.seg, []).append((s, i, t))
        # streams[piece] = [(range, [(step, stage)])]; stage = [(tag, transfer)]
        self.streams: list[list] = [[] for _ in range(p)]
        for seg, ops in per_seg.items():
            for piece in range(p):
                a, b = ranges[seg][piece]
                if a == b:
                    continue
                stages: dict[int, list] = {}
                for s, i, t in ops:
                    stages.setdefault(s, []).append(((s * width + i) * p + piece, t))
                self.streams[piece].append(((a, b), [(s, stages[s]) for s in sorted(stages)]))
        self.horizon = p + schedule.nsteps
        self.free: dict[int, list] = _pool(flat.dtype)  # scratch buffers by length

    def _scratch(self, numel: int) -> torch.Tensor:
        bufs = self.free.get(numel)
        return bufs.pop() if bufs else torch.empty(numel, dtype=self.flat.dtype)

    def _recvs(self, rng, stage):
        """Post this stage's receives: into a scratch buffer when the data is added
        (reduce) or when this rank also sends from the range in the stage, else
        straight into the tensor. Posted before this rank's earlier stages of the
        piece are done; a direct receive cannot land too early, because in a
        collective the value it brings (a broadcast or a final sum) is only sent
        once it includes what those earlier stages sent from the same range."""
        a, b = rng
        me, recv = self._me, self.pg.recv
        sends = any(t.src == me for _, t in stage)  # then receives must not overwrite
        works, after = [], []
        for tag, t in stage:
            if t.src == me:
                continue
            tag %= 2**31 - 1
            if t.reduce or sends:
                buf = self._scratch(b - a)
                works.append(recv([_bytes(buf)], t.src, tag))
                after.append((t.reduce, buf))
            else:
                works.append(recv([self.u8[a * self.item:b * self.item]], t.src, tag))
        return works, after

    def _sends(self, rng, stage):
        a, b = rng
        me, send, data = self._me, self.pg.send, self.u8[a * self.item:b * self.item]
        return [send([data], t.dst, tag % (2**31 - 1)) for tag, t in stage if t.src == me]

    def go(self, window: int, timeout: float | None) -> None:
        due: list[list] = [[] for _ in range(self.horizon)]  # time -> posted stages
        wait_kw = {"timeout": datetime.timedelta(seconds=timeout)} if timeout else {}

        def post(piece, rng, stages, k, recvs):
            works, after = recvs[k]
            due[piece + stages[k][0]].append(
                (piece, rng, stages, k, recvs, self._sends(rng, stages[k][1]) + works, after))

        started = 0
        for now in range(self.horizon):
            while started < self.p and started <= now + window:
                for rng, stages in self.streams[started]:
                    # every receive of the piece is posted now: gloo sends only once the
                    # peer has announced the receive, so a receive posted late would add
                    # a round trip (behind queued data) to every hop
                    recvs = [self._recvs(rng, st) for _, st in stages]
                    post(started, rng, stages, 0, recvs)
                started += 1
            for piece, rng, stages, k, recvs, works, after in due[now]:
                for w in works:
                    w.wait(**wait_kw)
                a, b = rng
                for red, buf in after:
                    if red:
                        _add(self.flat[a:b], buf)
                    else:
                        self.flat[a:b].copy_(buf)
                    self.free.setdefault(buf.numel(), []).append(buf)
                if k + 1 < len(stages):
                    post(piece, rng, stages, k + 1, recvs)
            due[now] = []
        kept = sum(b.numel() * b.element_size() for bufs in self.free.values() for b in bufs)
        if kept > POOL_BYTES:
            self.free.clear()
