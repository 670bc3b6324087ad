"""Run a schedule over torch.distributed point-to-point (isend/irecv).

Every segment is cut into `pieces` equal pieces; piece p's schedule step s runs
at time step p + s, so consecutive pieces pipeline down trees and around rings.
In a time step a rank posts all its receives and sends, waits for them (with
a timeout), then adds the received data of reducing transfers into its copy.
Data travels as raw bytes, so any dtype works; the result of every
collective is computed in one place and then copied, so all ranks end with
bit-identical values.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from weft.collectives.costmodel import pieces_for
from weft.collectives.schedule import Schedule, segment_range, split_points

DEFAULT_CHUNK = 1 << 20


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype != torch.uint8 else t


def _add(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.dtype == torch.bool:
        dst.logical_or_(src)
    else:
        dst.add_(src)


def execute(schedule: Schedule, tensor: torch.Tensor, group=None,
            chunk_bytes: int = DEFAULT_CHUNK, pieces: int | None = None,
            timeout: float | None = 120.0) -> torch.Tensor:
    """Run `schedule` in place on `tensor` (this rank's copy); returns `tensor`.

    Every rank of `group` must call it with the same schedule, shape, dtype and
    chunk size. broadcast: root's data everywhere; reduce: the sum at the root
    (other ranks' copies are left holding partial sums); allreduce: the sum
    everywhere; reduce_scatter: rank r's shard (numpy.array_split of the flat
    tensor) holds the sum on rank r; all_gather: rank r's shard is copied from
    rank r to all.
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
    ranges = []
    for sg in schedule.segments:
        a, b = segment_range(sg, numel, n)
        pts = split_points(b - a, p)
        ranges.append([(a + pts[i], a + pts[i + 1]) for i in range(p)])
    glob = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))
    wait_kw = {"timeout": datetime.timedelta(seconds=timeout)} if timeout else {}
    nsteps = schedule.nsteps
    width = max(len(s) for s in schedule.steps) or 1
    mine = [[(i, t) for i, t in enumerate(st) if me in (t.src, t.dst)] for st in schedule.steps]
    for k in range(p + nsteps - 1):
        works, after = [], []
        active = range(max(0, k - p + 1), min(k, nsteps - 1) + 1)
        sent = {(t.seg, k - s) for s in active for _, t in mine[s] if t.src == me}
        for s in active:
            piece = k - s
            for i, t in mine[s]:
                a, b = ranges[t.seg][piece]
                if a == b:
                    continue
                tag = ((k % 4) * nsteps + s) * width + i
                if t.src == me:
                    works.append(dist.isend(_bytes(flat[a:b]), glob(t.dst), group=group, tag=tag))
                elif t.reduce or (t.seg, piece) in sent:
                    buf = torch.empty(b - a, dtype=flat.dtype)
                    works.append(dist.irecv(_bytes(buf), glob(t.src), group=group, tag=tag))
                    after.append((t.reduce, a, b, buf))
                else:
                    works.append(dist.irecv(_bytes(flat[a:b]), glob(t.src), group=group, tag=tag))
        for w in works:
            w.wait(**wait_kw)
        for red, a, b, buf in after:
            if red:
                _add(flat[a:b], buf)
            else:
                flat[a:b].copy_(buf)
    if flat.data_ptr() != tensor.data_ptr():
        tensor.copy_(flat.view_as(tensor))
    return tensor
