"""Deterministic epoch sharding that survives resizes.

Every epoch has one global permutation of the dataset (seeded by seed and
epoch). A single global counter, `consumed`, says how many samples of the
epoch the job has trained on. A step takes the next global batch of
indices of the permutation and gives rank r the r-th slice, so after any
resize the new world simply continues from `consumed`: no sample of the
epoch is skipped or repeated. The last step of an epoch splits whatever is
left as evenly as possible (some ranks may get one sample fewer, or none).
"""

from __future__ import annotations

import torch


class EpochSharder:
    def __init__(self, size: int, seed: int = 0):
        if size < 1:
            raise ValueError(f"dataset size must be >= 1, got {size}")
        self.size, self.seed = size, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.size, generator=g))
        return self._perm[1]

    def step_indices(self, epoch: int, consumed: int, rank: int, world: int,
                     global_batch: int) -> tuple[torch.Tensor, int]:
        """(this rank's sample indices, global number of samples in this step), the global
        batch split as evenly as possible over the `world` ranks."""
        if not 0 <= consumed < self.size:
            raise ValueError(f"consumed={consumed} outside [0, {self.size})")
        total = min(global_batch, self.size - consumed)
        base, extra = divmod(total, world)
        lo = consumed + rank * base + min(rank, extra)
        hi = lo + base + (1 if rank < extra else 0)
        return self.permutation(epoch)[lo:hi], total
