"""In-process class-parallel inference and the combiner every serving path shares.

Each member returns calibrated probabilities of its own classes; `combine` writes them into one
[N, classes] score matrix (each class is answered by exactly one member) and the answer is the
class with the highest calibrated confidence. The worker pool (weft.serve.workers) runs the same
`Member.probs` in other processes and the same `combine` here, so both paths answer alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weft.serve.bundle import Bundle
from weft.serve.errors import ServeError


def check_input(x, input_shape: Sequence[int]) -> tuple[torch.Tensor, bool]:
    """(batch [N, *input_shape] float32, whether `x` was a single input)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    shape = tuple(input_shape)
    if tuple(x.shape) == shape:
        return x.unsqueeze(0), True
    if x.dim() == len(shape) + 1 and tuple(x.shape[1:]) == shape and x.shape[0] > 0:
        return x, False
    raise ServeError(f"input has shape {list(x.shape)}, expected {list(shape)} or [N, {', '.join(map(str, shape))}]")


def combine(num_classes: int, parts: Sequence[tuple[Sequence[int], torch.Tensor]]) -> torch.Tensor:
    """Scatter each (classes, probs [N, len(classes)]) into an [N, num_classes] score matrix."""
    n = parts[0][1].shape[0]
    scores = torch.empty(n, num_classes, dtype=torch.float32)
    for classes, probs in parts:
        scores[:, list(classes)] = probs
    return scores


class Predictor:
    """Shared front end: `predict` and `predict_scores` over any `_scores(batch)` backend."""

    bundle: Bundle

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.bundle.input_shape

    @property
    def num_classes(self) -> int:
        return self.bundle.num_classes

    def predict_scores(self, x) -> torch.Tensor:
        """Calibrated confidence of every class: [N, classes] (or [classes] for one input)."""
        batch, single = check_input(x, self.input_shape)
        scores = self._scores(batch)
        return scores[0] if single else scores

    def predict(self, x) -> torch.Tensor:
        """The most confident class: a 0-d tensor for one input, [N] for a batch."""
        return self.predict_scores(x).argmax(-1)

    def _scores(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Ensemble(Predictor):
    """All members in this process, one after another (or on CUDA streams with device="cuda").

    `fold`: serve each member with its batch norms folded into its convolutions
    (`weft.serve.fold`; a member that cannot be is served as it is, and `not_folded` says
    why)."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu", fold: bool = True):
        missing = [m.name for m in bundle.members if m.module is None]
        if missing:
            raise ServeError(f"bundle members {missing} were not loaded")
        self.bundle = bundle
        self.device = torch.device(device)
        for m in bundle.members:
            m.module.to(self.device).eval()
        self.not_folded = {m.name: why for m in bundle.members
                           if fold and (why := m.fold(bundle.input_shape, self.device))}
        self.streams = ([torch.cuda.Stream(self.device) for _ in bundle.members]
                        if self.device.type == "cuda" else None)

    @torch.inference_mode()
    def _scores(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.streams is None:
            parts = [(m.classes, m.probs(batch)) for m in self.bundle.members]
        else:  # members overlap on their own streams
            cur = torch.cuda.current_stream(self.device)
            parts = []
            for m, s in zip(self.bundle.members, self.streams):
                s.wait_stream(cur)
                with torch.cuda.stream(s):
                    parts.append((m.classes, m.probs(batch)))
            for s in self.streams:
                cur.wait_stream(s)
        return combine(self.num_classes, [(c, p.cpu()) for c, p in parts])
