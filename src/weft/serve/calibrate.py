"""Temperature scaling (Guo et al., 2017): one scalar T per subnet, fitted on held-out data.

Each subnet's softmax(logits / T) then estimates the probability of its own classes on the same
scale as the other subnets', so the combiner can pick the most confident class across subnets.
"""

from __future__ import annotations

import itertools
import math

import torch
from scipy.optimize import minimize_scalar
from torch.nn import functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = (0.05, 20.0),
                    prior: float = 1.0) -> float:
    """The T in `bounds` minimising the summed negative log-likelihood of softmax(logits / T)
    plus (log T)^2 / (2 prior^2): a weak pull towards T = 1, so data the subnet separates
    perfectly (whose likelihood keeps rising as T -> 0) does not send T to the bound."""
    logits, labels = logits.detach().double(), labels.detach()

    def nll(log_t: float) -> float:
        return (F.cross_entropy(logits / math.exp(log_t), labels, reduction="sum").item()
                + 0.5 * (log_t / prior) ** 2)

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    return float(math.exp(res.x))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of the top-1 confidence: mean |accuracy - confidence| over equal-width bins."""
    conf, pred = probs.max(1)
    hit = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.double().mean().item() * abs(hit[m].mean().item() - conf[m].double().mean().item())
    return ece

