"""Weight stashing (PipeDream): each micro-batch's backward uses its forward's weights.

A `WeightStash` wraps one model chunk. `forward(mb, x)` runs the chunk with a
snapshot of the weights (shared by every micro-batch that saw the same
version) through `torch.func.functional_call`, so later in-place optimizer
updates cannot touch the autograd graph. `backward(mb, ...)` differentiates
w.r.t. that snapshot and hands back gradients for the live parameters. With
vertical sync, `forward` is told which version to use (the one the input stage
used for this micro-batch) and older versions are kept until no pending
micro-batch needs them.

`log` records, per micro-batch, the version and a checksum of the weights at
the forward and those differentiated at the backward, so tests can assert
that they are the same tensors even though the live weights moved on.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from weft.errors import PlanError


def _checksum(tensors) -> float:
    with torch.no_grad():
        return float(sum(t.double().sum() + (t.double() ** 2).sum() for t in tensors))


class WeightStash:
    def __init__(self, module: nn.Module, keep_log: bool = False):
        self.module = module
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.version = 0
        self.versions: dict[int, list[torch.Tensor]] = {}
        self.saved: dict[int, tuple] = {}
        self.keep_log = keep_log
        self.log: dict[int, dict] = {}

    def _snapshot(self, version: int) -> list[torch.Tensor]:
        if version not in self.versions:
            if version != self.version:
                raise PlanError(f"weight version {version} is no longer stashed (live version "
                                f"{self.version}); vertical sync needs it kept")
            self.versions[version] = [p.detach().clone().requires_grad_(True)
                                      for p in self.params]
        return self.versions[version]

    def forward(self, mb: int, x: torch.Tensor, version: int | None = None,
                run_on: torch.Tensor | None = None) -> torch.Tensor:
        """Run the chunk on `x` (or on `run_on`, a copy of `x` for a chunk that changes its
        input in place; the backward still returns the gradient of `x`)."""
        version = self.version if version is None else version
        if version > self.version:
            raise PlanError(f"micro-batch {mb} asks for weight version {version} but this stage "
                            f"is at {self.version}")
        weights = self._snapshot(version)
        out = functional_call(self.module, dict(zip(self.names, weights)),
                              (x if run_on is None else run_on,))
        self.saved[mb] = (x, out, version)
        if self.keep_log:
            self.log[mb] = {"fwd_version": version, "fwd_checksum": _checksum(weights)}
        return out

    def backward(self, mb: int, out_or_loss: torch.Tensor | None = None,
                 grad: torch.Tensor | None = None) -> torch.Tensor | None:
        """Backward of micro-batch mb; sets live `.grad`s, returns the input gradient."""
        x, out, version = self.saved.pop(mb)
        weights = self.versions[version]
        target = out if out_or_loss is None else out_or_loss
        wrt = ([x] if x.requires_grad else []) + weights
        grads = torch.autograd.grad(target, wrt, grad, allow_unused=True)
        gx = grads[0] if x.requires_grad else None
        for p, g in zip(self.params, grads[len(wrt) - len(weights):]):
            p.grad = torch.zeros_like(p) if g is None else g
        if self.keep_log:
            used = [t for t in wrt[len(wrt) - len(weights):]]
            self.log[mb].update(bwd_version=version, bwd_checksum=_checksum(used),
                                live_version=self.version,
                                live_checksum=_checksum(self.params))
        return gx

    def updated(self, keep: set[int] | None = None) -> None:
        """Call after the optimizer stepped: bump the version, drop unneeded snapshots."""
        self.version += 1
        needed = {v for _, _, v in self.saved.values()} | (keep or set())
        if keep is not None:  # vertical sync: keep the new version for later micro-batches
            self._snapshot(self.version)
            needed.add(self.version)
        for v in list(self.versions):
            if v not in needed:
                del self.versions[v]
