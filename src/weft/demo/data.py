"""Data that ships with a package: scikit-learn's handwritten digits (1,797 8x8 images)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset


def digits(test_fraction: float = 0.2, seed: int = 0, flat: bool = False) -> tuple[TensorDataset, TensorDataset]:
    """Train and test sets of sklearn's `load_digits` (no download), pixels scaled to [0, 1].

    Images are (1, 8, 8) float32 tensors, or (64,) with `flat=True`; labels int64.
    The split is stratified and fixed by `seed`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x = x.reshape(len(x), 64) if flat else x.reshape(len(x), 1, 8, 8)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (TensorDataset(torch.from_numpy(xtr), torch.from_numpy(ytr)),
            TensorDataset(torch.from_numpy(xte), torch.from_numpy(yte)))
