"""Physical channel removal over a ChannelGraph, per-class activation statistics, size counts.

`prune` returns a smaller copy of the traced model: every layer's weight tensors are sliced to
the kept channels (conv/linear outputs, batch-norm and depthwise channels, the inputs of the next
layers), so the copy computes exactly what the original computes on those channels.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from weft.serve.errors import ServeError
from weft.serve.graph import ChannelGraph


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=like.requires_grad)


def _slice_out(mod: nn.Module, idx: torch.Tensor) -> None:
    mod.weight = _param(mod.weight[idx], mod.weight)
    if mod.bias is not None:
        mod.bias = _param(mod.bias[idx], mod.bias)
    if isinstance(mod, nn.Conv2d):
        mod.out_channels = len(idx)
    else:
        mod.out_features = len(idx)


def _slice_in(mod: nn.Module, idx: torch.Tensor, per_channel: int) -> None:
    cols = (idx[:, None] * per_channel + torch.arange(per_channel)).reshape(-1)
    mod.weight = _param(mod.weight[:, cols], mod.weight)
    if isinstance(mod, nn.Conv2d):
        mod.in_channels = len(cols)
    else:
        mod.in_features = len(cols)


def _slice_channels(mod: nn.Module, idx: torch.Tensor) -> None:
    if isinstance(mod, nn.Conv2d):  # depthwise
        _slice_out(mod, idx)
        mod.in_channels = mod.groups = len(idx)
        return
    if mod.weight is not None:
        mod.weight = _param(mod.weight[idx], mod.weight)
        mod.bias = _param(mod.bias[idx], mod.bias)
    if mod.running_mean is not None:
        mod.running_mean = mod.running_mean[idx].clone()
        mod.running_var = mod.running_var[idx].clone()
    mod.num_features = len(idx)


def prune(graph: ChannelGraph, keep: Mapping[int, Sequence[int]]) -> torch.fx.GraphModule:
    """A copy of `graph.gm` keeping, for each group id in `keep`, only the listed channels."""
    gm = copy.deepcopy(graph.gm)
    mods = dict(gm.named_modules())
    for gid, kept in keep.items():
        g = graph.groups.get(gid)
        if g is None:
            raise ServeError(f"keep: no channel group {gid} (groups: {sorted(graph.groups)})")
        idx = torch.as_tensor(sorted({int(i) for i in kept}), dtype=torch.long)
        if not g.prunable and len(idx) != g.size:
            raise ServeError(f"keep: channel group {gid} cannot be pruned ({g.frozen})")
        if len(idx) == 0 or idx[0] < 0 or idx[-1] >= g.size:
            raise ServeError(f"keep: group {gid} needs 1..{g.size} channel indices in [0, {g.size}), got {list(kept)[:8]}")
        if len(idx) == g.size:
            continue
        for name in g.producers:
            _slice_out(mods[name], idx)
        for name in g.per_channel:
            _slice_channels(mods[name], idx)
        for name, per_channel in g.consumers:
            _slice_in(mods[name], idx, per_channel)
    return gm


def replace_head(gm: torch.fx.GraphModule, head: str, classes: Sequence[int], other: bool) -> None:
    """Make the classifier head answer `classes` (in order), plus an "other" output if `other`.

    Rows are copied from the old head; "other" starts as the mean of the remaining rows.
    """
    old = gm.get_submodule(head)
    rows = torch.as_tensor(list(classes), dtype=torch.long)
    new = nn.Linear(old.in_features, len(rows) + int(other), bias=old.bias is not None)
    with torch.no_grad():
        new.weight[: len(rows)] = old.weight[rows]
        rest = torch.ones(old.out_features, dtype=torch.bool)
        rest[rows] = False
        if other:
            new.weight[-1] = old.weight[rest].mean(0)
        if old.bias is not None:
            new.bias[: len(rows)] = old.bias[rows]
            if other:
                new.bias[-1] = old.bias[rest].mean() + torch.log(rest.sum().float())
    gm.add_submodule(head, new)


class _Recorder(torch.fx.Interpreter):
    """Runs the graph and reduces each measured activation to per-sample, per-channel numbers."""

    def __init__(self, gm, points):
        super().__init__(gm)
        self.points, self.nonzero, self.magnitude = points, {}, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.points:
            dims = tuple(range(2, out.dim()))
            nz = (out != 0).float()
            mag = out.abs()
            self.nonzero[n.name] = nz.mean(dims) if dims else nz
            self.magnitude[n.name] = mag.mean(dims) if dims else mag
        return out


@torch.inference_mode()
def class_statistics(graph: ChannelGraph, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
                     ) -> dict[str, dict[int, torch.Tensor]]:
    """Per-class mean activation statistics of every prunable group, summed over its points.

    Returns {"apoz": {gid: [classes, channels] fraction of zeros}, "magnitude": {gid: [classes,
    channels] mean |activation|, each point scaled to max 1}}.
    """
    points = graph.point_groups()
    k = graph.num_classes
    counts = torch.bincount(y, minlength=k).clamp(min=1).float()[:, None]
    sums = {s: {name: None for name in points} for s in ("nonzero", "magnitude")}
    graph.gm.eval()
    for i in range(0, len(x), batch_size):
        rec = _Recorder(graph.gm, points)
        rec.run(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        for stat, per_point in sums.items():
            for name, v in getattr(rec, stat).items():
                acc = per_point[name]
                if acc is None:
                    acc = per_point[name] = torch.zeros(k, v.shape[1])
                acc.index_add_(0, yb, v)
    out: dict[str, dict[int, torch.Tensor]] = {"apoz": {}, "magnitude": {}}
    for g in graph.prunable():
        nz = torch.stack([sums["nonzero"][p] / counts for p in g.points]).mean(0)
        mags = [sums["magnitude"][p] / counts for p in g.points]
        mag = torch.stack([m / m.max().clamp(min=1e-12) for m in mags]).mean(0)
        out["apoz"][g.id] = 1 - nz
        out["magnitude"][g.id] = mag
    return out


def select_channels(graph: ChannelGraph, stats: dict[str, dict[int, torch.Tensor]], classes: Sequence[int],
                    keep: float, criterion: str, class_weights: torch.Tensor | None = None) -> dict[int, list[int]]:
    """For each prunable group, the `keep` fraction of channels most active on `classes`."""
    if criterion not in ("apoz", "magnitude"):
        raise ServeError(f"criterion {criterion!r}: expected 'apoz' or 'magnitude'")
    if not 0 < keep <= 1:
        raise ServeError(f"keep={keep}: expected a fraction in (0, 1]")
    rows = torch.as_tensor(list(classes), dtype=torch.long)
    w = torch.ones(len(rows)) if class_weights is None else class_weights[rows].float()
    w = w / w.sum()
    kept = {}
    for gid, per_class in stats[criterion].items():
        s = (per_class[rows] * w[:, None]).sum(0)
        importance = 1 - s if criterion == "apoz" else s
        n = max(1, round(keep * len(importance)))
        order = torch.argsort(-importance, stable=True)
        kept[gid] = sorted(order[:n].tolist())
    return kept


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on one input (torch's FlopCounterMode: 2 per multiply-add)."""
    was = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            module(torch.zeros(1, *input_shape))
    finally:
        module.train(was)
    return int(counter.get_total_flops())
