"""User callbacks of adaptive training, and what they see.

A callback is any object with some of these methods (all optional), called in every
worker at the same step boundaries (so a callback may use collectives, e.g. evaluate a
model sharded by a plan):

    on_step_end(run)          after each completed step (and its checkpoint)
    on_change(run, event)     after a resize, failure recovery, strategy switch or re-plan
    on_train_end(run)         once, on the workers that finish the job

`run.log(name=value)` adds values to this step's history entry (they appear in the
report and `history`). A callback with `state_dict()/load_state_dict()` keeps its state
across resizes, failures (rolled back with the model) and resumes, like the user's
`state` object (`run.state`).
"""

from __future__ import annotations

from typing import Any


class Run:
    """A worker's view of the run for callbacks."""

    def __init__(self, trainer):
        self._t = trainer

    step = property(lambda self: self._t.step)  # steps completed
    epoch = property(lambda self: self._t.epoch)
    world = property(lambda self: self._t.mem.world)
    rank = property(lambda self: self._t.mem.rank)
    wid = property(lambda self: self._t.wid)
    metrics = property(lambda self: dict(self._t.metrics))
    model = property(lambda self: self._t.engine.model)  # call it; under a plan: parallelized
    optimizer = property(lambda self: self._t.engine.opt)
    scheduler = property(lambda self: self._t.engine.sched)
    state = property(lambda self: self._t.user)  # the user's state object (or None)
    test = property(lambda self: self._t.built.test)
    events = property(lambda self: list(self._t.events))

    @property
    def is_main(self) -> bool:
        return self._t.mem.rank == 0

    def log(self, **values: Any) -> None:
        if self._t.history:
            self._t.history[-1].update(values)


def call(callbacks, name: str, *args) -> None:
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(*args)


def states(callbacks) -> list:
    return [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in callbacks]


def load_states(callbacks, saved: list) -> None:
    for cb, s in zip(callbacks, saved or []):
        if s is not None and hasattr(cb, "load_state_dict"):
            cb.load_state_dict(s)


class EvalEvery:
    """Evaluate on the test set (the workload's) every `every` steps and at the end; logs
    `test_loss` (and `test_accuracy` for class logits)."""

    def __init__(self, every: int = 50, max_samples: int | None = None):
        self.every, self.max_samples = every, max_samples

    def _eval(self, run: Run) -> None:
        from weft.adapt.workload import evaluate

        test = run.test
        if test is None:
            return
        if self.max_samples is not None and len(test) > self.max_samples:
            import torch

            test = torch.utils.data.Subset(test, range(self.max_samples))
        r = evaluate(run.model, test, run._t.built.loss_fn)
        run.log(**{f"test_{k}": v for k, v in r.items()})

    def on_step_end(self, run: Run) -> None:
        if run.step % self.every == 0:
            self._eval(run)

    def on_train_end(self, run: Run) -> None:
        if run.step % self.every:
            self._eval(run)
