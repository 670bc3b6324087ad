"""Flatten a list of tensors into one buffer and copy it back: one collective instead of many.

    buf = flatten(params)                    # 1-D, detached, concatenated in order
    comm.all_reduce(buf, op="avg")
    copy_from_flat(params, buf)              # each tensor takes its slice, in place
    views = unflatten(buf, params)           # or: views of the buffer shaped like each tensor
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


def flatten(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """One 1-D tensor holding every tensor's (detached) values in order, cast to `dtype`."""
    parts = [t.detach().reshape(-1) for t in tensors]
    if not parts:
        return torch.empty(0, dtype=dtype or torch.float32)
    if dtype is not None:
        parts = [p.to(dtype) for p in parts]
    return torch.cat(parts)


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of `flat` with the shapes of `like` (the inverse of `flatten`, no copy)."""
    out, off = [], 0
    for t in like:
        n = t.numel()
        out.append(flat[off:off + n].view(t.shape))
        off += n
    if off != flat.numel():
        raise ValueError(f"flat buffer has {flat.numel()} elements, the tensors {off}")
    return out


def copy_from_flat(tensors: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy each tensor's slice of `flat` into it, in place (casting to its dtype)."""
    with torch.no_grad():
        for t, v in zip(tensors, unflatten(flat, tensors)):
            t.copy_(v)
