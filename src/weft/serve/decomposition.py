"""sensAI decomposition: a trained N-class classifier -> G pruned, calibrated class-group subnets.

1. Trace the model and find its channel groups (weft.serve.graph).
2. Group the classes: one per subnet (G = N), or G balanced groups by k-means over per-class
   mean penultimate features ("kmeans") or mean log-probabilities ("confusion").
3. Measure per-class activation statistics on the training data in one pass.
4. For each class group: keep the `keep` fraction of every prunable channel group that is most
   active on those classes (APoZ or magnitude), physically remove the rest, give the subnet a
   head for its classes plus "other" (none when G = 1), fine-tune it briefly on the labels and
   the original's probabilities, and fit its temperature on a held-out calibration split.

Removal is gradual: for the first `fade` fraction of the fine-tuning steps the subnet still has
every channel, and the outputs of the channels to be removed are scaled from 1 down to 0 while
it trains, so the kept channels learn to do without them; then they are removed (which changes
nothing, they are 0 by then) and the smaller subnet trains for the remaining steps. Removing
half of every channel group at once leaves a network that answers at chance (measured: 10.0% on
the 32x32 digits) and must relearn from there.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from weft import __version__
from weft.serve.bundle import Bundle, Member
from weft.serve.calibrate import fit_temperature
from weft.serve.ensemble import Ensemble
from weft.serve.errors import ServeError
from weft.serve.graph import ChannelGraph, analyze
from weft.serve.grouping import balanced_kmeans, check_groups
from weft.serve.pruning import (
    class_statistics,
    count_flops,
    count_params,
    prune,
    replace_head,
    select_channels,
)


@dataclass
class DecomposeConfig:
    groups: int | None = None     # subnets; None = one per class
    grouping: str = "kmeans"      # "kmeans" (features) or "confusion" (mean log-probabilities)
    criterion: str = "apoz"       # "apoz" or "magnitude"
    keep: float = 0.5             # fraction of each prunable channel group kept
    steps: int = 300              # fine-tuning steps per subnet
    fade: float = 0.4             # fraction of `steps` spent fading the removed channels out
    batch_size: int = 64
    lr: float = 6e-3              # pruning removes enough that the subnet must relearn: 1e-3 underfits
    distill: float = 0.0          # weight of the original's softened probabilities (0: labels only)
    distill_temperature: float = 2.0
    calib_fraction: float = 0.15  # of the training data, held out for temperature scaling
    seed: int = 0
    on_unsupported: str = "error"  # or "freeze": keep the channels an unsupported node touches

    def check(self) -> None:
        if self.grouping not in ("kmeans", "confusion"):
            raise ServeError(f"grouping={self.grouping!r}: expected 'kmeans' or 'confusion'")
        if self.criterion not in ("apoz", "magnitude"):
            raise ServeError(f"criterion={self.criterion!r}: expected 'apoz' or 'magnitude'")
        if not 0 < self.keep <= 1:
            raise ServeError(f"keep={self.keep}: expected a fraction in (0, 1]")
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ServeError(f"steps={self.steps}, batch_size={self.batch_size}, lr={self.lr}: "
                             "expected steps >= 0, batch_size >= 1, lr > 0")
        if not 0 <= self.fade < 1:
            raise ServeError(f"fade={self.fade}: expected a fraction in [0, 1)")
        if not self.distill_temperature > 0:
            raise ServeError(f"distill_temperature={self.distill_temperature}: expected > 0")
        if not 0 <= self.distill <= 1 or not 0 < self.calib_fraction < 1:
            raise ServeError(f"distill={self.distill}, calib_fraction={self.calib_fraction}: "
                             "expected distill in [0, 1] and calib_fraction in (0, 1)")


def tensors(data, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32, y int64) from a TensorDataset or an (x, y) pair; `name` labels errors."""
    pair = getattr(data, "tensors", data)
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ServeError(f"{name}: expected a TensorDataset or (inputs, labels), got {type(data).__name__}")
    x, y = (torch.as_tensor(t) for t in pair)
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y) or len(x) == 0:
        raise ServeError(f"{name}: inputs {list(x.shape)} and labels {list(y.shape)} must be [N, ...] and [N], N > 0")
    if y.dtype.is_floating_point:
        raise ServeError(f"{name}: labels are {y.dtype}, expected integer class indices")
    return x.float(), y.long()


def decompose(model: nn.Module, train, test=None, config: DecomposeConfig | None = None,
              log: Callable[[str], None] | None = None, class_names: list[str] | None = None) -> Bundle:
    """Decompose `model` (trained on `train`) into a Bundle of subnets; `test` is only evaluated."""
    cfg = config or DecomposeConfig()
    cfg.check()
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    x, y = tensors(train, "train data")
    graph = analyze(model, tuple(x.shape[1:]), cfg.on_unsupported)
    k = graph.num_classes
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ServeError(f"train data: labels span {int(y.min())}..{int(y.max())}, but the model has {k} classes")
    missing = sorted(set(range(k)) - set(y.tolist()))
    if missing:
        raise ServeError(f"train data: no samples of classes {missing}")
    g_count = k if cfg.groups is None else cfg.groups
    check_groups(g_count, k)
    torch.manual_seed(cfg.seed)
    (xf, yf), (xc, yc) = _split(x, y, cfg.calib_fraction, cfg.seed)
    log(f"traced {type(model).__name__}: {len(graph.prunable())} of {len(graph.groups)} channel groups "
        f"prunable; {len(xf)} samples to fine-tune, {len(xc)} to calibrate")

    stats, teacher, features = _measure(graph, xf, yf)  # teacher: the original's logits
    class_sets = _group_classes(graph, xc, yc, features, g_count, cfg)
    log("class groups: " + " ".join("{" + ",".join(map(str, s)) + "}" for s in class_sets))

    total = sum(g.size for g in graph.prunable())
    members = []
    for i, classes in enumerate(class_sets):
        ts = time.perf_counter()
        kept = select_channels(graph, stats, classes, cfg.keep, cfg.criterion)
        other = len(classes) < k
        target = _targets(yf, teacher, classes, other, k, cfg.distill_temperature)
        fade = round(cfg.fade * cfg.steps)
        whole = prune(graph, {})  # a copy with every channel
        replace_head(whole, graph.head, classes, other)
        if fade:
            _fade_out(whole, graph, kept, xf, target, cfg, fade, seed=cfg.seed + i)
        sub = prune(dataclasses.replace(graph, gm=whole), kept)
        _fine_tune(sub, xf, target, cfg, seed=cfg.seed + i, steps=cfg.steps - fade)
        t = fit_temperature(_logits(sub, xc), _labels(yc, classes, k))
        info = {"params": count_params(sub), "flops": count_flops(sub, graph.input_shape),
                "kept_ratio": sum(len(v) for v in kept.values()) / total if total else 1.0,
                "kept": {str(gid): v for gid, v in kept.items()}}
        members.append(Member(f"g{i}", list(classes), sub.eval(), t, other, info))
        log(f"subnet g{i} classes {classes}: {info['params']} params, {info['flops'] / 1e6:.2f} MFLOPs, "
            f"kept {info['kept_ratio']:.0%} of channels, T={t:.2f} ({time.perf_counter() - ts:.1f} s)")

    provenance = {"kind": "sensai", "model": type(model).__name__, "config": asdict(cfg),
                  "original": {"params": count_params(graph.gm), "flops": count_flops(graph.gm, graph.input_shape)},
                  "unsupported_frozen": graph.unsupported, "weft": __version__, "torch": torch.__version__,
                  "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "seconds": round(time.perf_counter() - t0, 1)}
    bundle = Bundle(members, k, graph.input_shape, class_names, provenance)
    if test is not None:
        xt, yt = tensors(test, "test data")
        provenance["test"] = {"samples": len(xt), "original_accuracy": _accuracy(graph.gm, xt, yt),
                              "ensemble_accuracy": evaluate(Ensemble(bundle), xt, yt)}
        log(f"test accuracy: original {provenance['test']['original_accuracy']:.4f}, "
            f"ensemble {provenance['test']['ensemble_accuracy']:.4f} ({len(xt)} samples)")
    return bundle


def evaluate(predictor, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    hits = sum((predictor.predict(x[i:i + batch_size]) == y[i:i + batch_size]).sum().item()
               for i in range(0, len(x), batch_size))
    return hits / len(x)


@torch.inference_mode()
def _accuracy(model, x, y, batch_size: int = 512) -> float:
    model.eval()
    return sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
               for i in range(0, len(x), batch_size)) / len(x)


def _split(x, y, fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    counts = torch.bincount(y)
    stratify = y.numpy() if int(counts[counts > 0].min()) >= 2 else None
    try:
        fit, cal = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise ServeError(f"train data: cannot hold out {fraction:.0%} for calibration: {exc}") from None
    fit, cal = torch.as_tensor(np.sort(fit)), torch.as_tensor(np.sort(cal))
    return (x[fit], y[fit]), (x[cal], y[cal])


def _measure(graph: ChannelGraph, x, y):
    """Per-class statistics, the original's probabilities and per-class mean head inputs."""
    head = graph.gm.get_submodule(graph.head)
    feats = []
    hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach()))
    try:
        stats = class_statistics(graph, x, y)
    finally:
        hook.remove()
    f = torch.cat(feats)
    with torch.inference_mode():
        teacher = torch.cat([head(f[i:i + 4096]) for i in range(0, len(f), 4096)])
    k = graph.num_classes
    means = torch.zeros(k, f.shape[1]).index_add_(0, y, f) / torch.bincount(y, minlength=k)[:, None]
    return stats, teacher, F.normalize(means, dim=1)


def _group_classes(graph, xc, yc, features, groups: int, cfg: DecomposeConfig) -> list[list[int]]:
    if cfg.grouping == "kmeans":
        return balanced_kmeans(features.numpy(), groups, cfg.seed)
    k = graph.num_classes
    with torch.inference_mode():
        logp = torch.log_softmax(graph.gm(xc), 1)
    vec = torch.zeros(k, k).index_add_(0, yc, logp) / torch.bincount(yc, minlength=k).clamp(min=1)[:, None]
    return balanced_kmeans(vec.numpy(), groups, cfg.seed)


def _labels(y, classes, k: int) -> torch.Tensor:
    remap = torch.full((k,), len(classes), dtype=torch.long)
    remap[torch.as_tensor(classes)] = torch.arange(len(classes))
    return remap[y]


def _targets(y, teacher_logits, classes, other: bool, k: int, tau: float):
    """Hard labels over the subnet's outputs and the original's probabilities at temperature
    `tau`, summed over the classes outside the subnet into "other"."""
    p = torch.softmax(teacher_logits / tau, 1)
    soft = p[:, torch.as_tensor(classes)]
    if other:
        soft = torch.cat([soft, (1 - soft.sum(1, keepdim=True)).clamp(min=0)], 1)
    return _labels(y, classes, k), soft / soft.sum(1, keepdim=True)


def _fade_out(whole: nn.Module, graph: ChannelGraph, kept: dict[int, list[int]], x, target,
              cfg: DecomposeConfig, steps: int, seed: int) -> None:
    """Train `whole` (every channel) for `steps` while the outputs of the channels not in `kept`
    are scaled linearly from 1 to 0; they end at exactly 0, so removing them changes nothing."""
    mods = dict(whole.named_modules())
    alpha = [1.0]
    hooks = []

    def scaler(drop: torch.Tensor):
        def hook(module, inputs, out):
            s = torch.where(drop, alpha[0], 1.0).to(out.dtype)
            return out * s.view(1, -1, *([1] * (out.dim() - 2)))
        return hook

    for gid, keep_idx in kept.items():
        g = graph.groups[gid]
        drop = torch.ones(g.size, dtype=torch.bool)
        drop[torch.as_tensor(keep_idx, dtype=torch.long)] = False
        if drop.any():  # the last per-channel layer's output (batch norm) or else the producers'
            for name in g.per_channel or g.producers:
                hooks.append(mods[name].register_forward_hook(scaler(drop)))
    try:
        _fine_tune(whole, x, target, cfg, seed, steps, cosine=False,
                   before_step=lambda s: alpha.__setitem__(0, 1 - (s + 1) / steps))
    finally:
        for h in hooks:
            h.remove()


def _fine_tune(sub: nn.Module, x, target, cfg: DecomposeConfig, seed: int, steps: int, cosine: bool = True,
               before_step: Callable[[int], None] | None = None) -> None:
    labels, soft = target
    if steps == 0:
        return
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(sub.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))) if cosine else (lambda s: 1.0))
    sub.train()
    perm, pos = torch.randperm(len(x), generator=gen), 0
    for step in range(steps):
        if before_step is not None:
            before_step(step)
        if pos + cfg.batch_size > len(x):
            perm, pos = torch.randperm(len(x), generator=gen), 0
        b = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        z = sub(x[b])
        loss = (1 - cfg.distill) * F.cross_entropy(z, labels[b])
        if cfg.distill:  # Hinton et al.: soft cross-entropy at temperature tau, scaled by tau^2
            tau = cfg.distill_temperature
            loss = loss - cfg.distill * tau ** 2 * (soft[b] * torch.log_softmax(z / tau, 1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    sub.eval()


@torch.inference_mode()
def _logits(sub: nn.Module, x) -> torch.Tensor:
    sub.eval()
    return torch.cat([sub(x[i:i + 512]) for i in range(0, len(x), 512)])
