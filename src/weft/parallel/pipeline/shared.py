"""Parameters shared across pipeline stages (tied embeddings, a module called twice).

Every rank builds the whole model, so a parameter that layers of two stages use (GPT-2's
``wte`` and ``lm_head``, BERT's word embeddings and MLM decoder) exists on both stages'
ranks. Each copy only gets the gradient of its own stage's use; stepped apart, the copies
drift. As Megatron does for its embedding group, `SharedGrads` sums the gradient of each
such parameter over every rank that holds it (all replicas of all stages that use it) before
the optimizer step: every copy then gets the full gradient and takes the same update, so
the copies stay bit-identical (an all-reduce leaves the same bits on every rank) and
training equals single-process training.

`cross_stage(layers, bounds, stage_ranks)` finds them (what `weft plan pipeline` reports);
PipeDream's asynchronous schedule updates each stage at its own time and cannot keep such
copies equal, so it refuses them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from weft.collectives.communicator import TorchCommunicator
from weft.parallel.pipeline.layers import shared_parameters
from weft.tensors import flatten, unflatten


def cross_stage(layers: nn.Sequential, bounds: list[tuple[int, int]],
                stage_ranks: list[list[int]]) -> list[dict]:
    """The parameters used by layers of two or more stages: `shared_parameters` entries with
    ``chunks``, ``stages`` and ``ranks`` (every rank holding a copy) added. Chunk c (layers
    ``bounds[c]``) lives on stage ``c % len(stage_ranks)``."""
    S = len(stage_ranks)
    out = []
    for e in shared_parameters(layers):
        chunks = sorted({c for c, (a, b) in enumerate(bounds) for i in e["layers"] if a <= i < b})
        stages = sorted({c % S for c in chunks})
        if len(stages) > 1:
            ranks = sorted(r for s in stages for r in stage_ranks[s])
            out.append(dict(e, chunks=chunks, stages=stages, ranks=ranks))
    return out


def describe(entries: list[dict]) -> list[dict]:
    """`cross_stage` entries as plain data (for plans and reports): names, layers, stages,
    ranks and bytes."""
    return [{k: e[k] for k in ("names", "layers", "stages", "ranks", "numel", "bytes")}
            for e in entries]


class SharedGrads:
    """Sums the gradients of cross-stage parameters over the ranks holding them.

    Construct on every rank with the same arguments (it creates one process group per
    distinct set of ranks, in the same order everywhere)."""

    def __init__(self, layers: nn.Sequential, bounds: list[tuple[int, int]],
                 stage_ranks: list[list[int]], rank: int):
        self.entries = cross_stage(layers, bounds, stage_ranks)
        self.syncs: list[tuple[TorchCommunicator, list[torch.Tensor]]] = []
        by_ranks: dict[tuple, list[dict]] = {}
        for e in self.entries:
            by_ranks.setdefault(tuple(e["ranks"]), []).append(e)
        for ranks, entries in by_ranks.items():
            group = dist.new_group(list(ranks))
            if rank in ranks:
                self.syncs.append((TorchCommunicator(group), [e["param"] for e in entries]))
        self.ids = {id(p) for _, params in self.syncs for p in params}

    def __bool__(self) -> bool:
        return bool(self.entries)

    def sync(self) -> None:
        """Replace each shared parameter's gradient on this rank by the sum over its copies
        (a missing gradient counts as zero)."""
        for comm, params in self.syncs:
            flat = flatten([p.grad if p.grad is not None else torch.zeros_like(p)
                            for p in params])
            comm.all_reduce(flat, op="sum")
            for p, g in zip(params, unflatten(flat, params)):
                p.grad = g.clone()
