"""`progress(loader)`: a progress bar for a user's own training loop, drawn by one rank.

    for x, y in progress(loader, f"epoch {epoch}"):
        ...

On rank 0 (or without torch.distributed) the items pass through rich's progress bar
(items done, rate, elapsed); on the other ranks, or with ``show=False``, the iterable is
returned unchanged, so every rank runs the same code and only one draws.
"""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def progress(items: Iterable[T], description: str = "train", show: bool = True) -> Iterable[T]:
    if not show or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        return items
    return _bar(items, description)


def _bar(items: Iterable[T], description: str) -> Iterator[T]:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    total = len(items) if hasattr(items, "__len__") else None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
