"""Training monitors: gradient noise scale, gradient variance / SNR, throughput, loss.

The statistics every rank contributes are packed into one small tensor
(`pack`) and summed across ranks by a collective the training loop already
runs (the gradient all-reduce under synchronous SGD) or by one extra
*asynchronous* all-reduce that completes while the optimizer steps. The
reduced tensor is turned into metrics by `Monitors.update`, which is pure
arithmetic, so every rank derives bit-identical metrics from the same
reduced values and policies can act on them without more communication.

Noise scale, after McCandlish et al., "An Empirical Model of Large-Batch
Training" (2018), App. A.1: with per-worker batch B_small, global batch
B_big = n * B_small, |G_small|^2 the mean over workers of their local
gradients' squared norms and |G_big|^2 the squared norm of the averaged
gradient,

    |G|^2  ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(S)  ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)
    B_simple = tr(S) / |G|^2

Both estimates are smoothed by an exponential moving average before the
ratio is taken (the ratio of averages is far less noisy than the average of
ratios).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from weft.tensors import flatten

# Layout of the packed statistics tensor (all summed across ranks).
N_STATS = 7
_SQNORM, _LOSS_SUM, _COUNT, _STEP_TIME, _RANKS, _CAPACITY, _COMM_TIME = range(N_STATS)


def noise_scale_terms(sq_small: float, sq_big: float, b_small: float, b_big: float) -> tuple[float, float]:
    """Unbiased estimates (|G|^2, tr(Sigma)) from two batch sizes (McCandlish et al., A.1)."""
    if not b_big > b_small > 0:
        raise ValueError(f"need B_big > B_small > 0, got B_small={b_small}, B_big={b_big}")
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    tr_sigma = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, tr_sigma


class EMA:
    """Exponential moving average with bias correction (exact mean for the first steps)."""

    def __init__(self, decay: float = 0.9):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.value, self.weight = decay, 0.0, 0.0

    def update(self, x: float) -> float:
        self.value = self.decay * self.value + (1 - self.decay) * x
        self.weight = self.decay * self.weight + (1 - self.decay)
        return self.get()

    def get(self) -> float:
        return self.value / self.weight if self.weight > 0 else float("nan")

    def state_dict(self) -> dict:
        return {"decay": self.decay, "value": self.value, "weight": self.weight}

    def load_state_dict(self, d: dict) -> None:
        self.decay, self.value, self.weight = d["decay"], d["value"], d["weight"]


def flat_grad(params) -> torch.Tensor:
    """All gradients of `params` as one flat tensor (zeros for a missing grad)."""
    return flatten(p.grad if p.grad is not None else torch.zeros_like(p) for p in params)


def pack(local_sq_norm: float, loss_sum: float, count: int, step_time: float,
         capacity: float = 0.0, comm_time: float = 0.0) -> torch.Tensor:
    """This rank's contribution to the summed statistics tensor (`capacity`: the number of
    workers the cluster can host now, contributed by rank 0 only, 0 elsewhere; `step_time`
    and `comm_time`: this rank's previous step and the part of it spent synchronising)."""
    return torch.tensor([local_sq_norm, loss_sum, float(count), step_time, 1.0, capacity,
                         comm_time], dtype=torch.float64)


@dataclass
class Monitors:
    """Turns reduced statistics into the metrics dict that policies read.

    Metrics: loss (global mean), samples, throughput (samples/s, from the
    mean step time), step_time and comm_time (the previous step's, mean over
    ranks; comm_time is its synchronisation part), and when gradients were measured on equal
    per-worker batches: grad_sq_small, grad_sq_big, grad_norm_sq (|G|^2 est.),
    grad_variance (tr(Sigma) est.), grad_snr (|G|^2 / (tr(Sigma)/B_big): the
    signal to noise of the averaged gradient), noise_scale (B_simple, EMA).
    """

    decay: float = 0.9
    enabled: bool = True
    g2: EMA = field(init=False)
    tr: EMA = field(init=False)
    last: dict = field(default_factory=dict)

    def __post_init__(self):
        self.g2, self.tr = EMA(self.decay), EMA(self.decay)

    def update(self, reduced: torch.Tensor, sq_big: float | None, equal_batches: bool) -> dict:
        """`reduced`: the summed `pack` tensor; `sq_big`: |mean gradient|^2 (a number or a
        0-d tensor) or None."""
        r = reduced.tolist()
        n = max(1.0, r[_RANKS])
        count = r[_COUNT]
        m = {"loss": r[_LOSS_SUM] / count if count else float("nan"), "samples": count,
             "step_time": r[_STEP_TIME] / n, "comm_time": r[_COMM_TIME] / n}
        m["throughput"] = count / m["step_time"] if m["step_time"] > 0 else float("nan")
        if r[_CAPACITY] > 0:
            m["capacity"] = float(r[_CAPACITY])
        if self.enabled and sq_big is not None and equal_batches and n > 1 and count > n:
            b_small, b_big = count / n, count
            sq_small, sq_big = r[_SQNORM] / n, float(sq_big)
            g2, trs = noise_scale_terms(sq_small, sq_big, b_small, b_big)
            m.update(grad_sq_small=sq_small, grad_sq_big=sq_big, grad_norm_sq=g2,
                     grad_variance=trs)
            m["grad_snr"] = g2 / (trs / b_big) if trs > 0 else float("inf")
            self.g2.update(g2)
            self.tr.update(trs)
        ema_g2 = self.g2.get()
        if ema_g2 > 0:  # measured, and the gradient signal is resolved above the noise
            m["noise_scale"] = self.tr.get() / ema_g2
        for k, v in self.last.items():  # metrics not measured this step keep their last value
            m.setdefault(k, v)
        self.last = {k: v for k, v in m.items() if isinstance(v, float) and math.isfinite(v)
                     and k != "capacity"}  # the trainer keeps capacity (it resets on resize)
        return m

    def state_dict(self) -> dict:
        return {"g2": self.g2.state_dict(), "tr": self.tr.state_dict(), "last": dict(self.last)}

    def load_state_dict(self, d: dict) -> None:
        self.g2.load_state_dict(d["g2"])
        self.tr.load_state_dict(d["tr"])
        self.last = dict(d["last"])
