"""Train a model spec with a pipeline plan on local gloo ranks (what `weft train --plan` runs).

A spec without ``dataset()`` trains on `DEFAULT_DATASET`, scikit-learn's digits flattened to
64 features (``digits(flat=True)``), resolved by name through `weft.model_spec` at run time:
the demo data sits in a higher layer than the runtime, which therefore never imports it.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from weft.errors import PlanError
from weft.model_spec import extra, load_model, load_module
from weft.parallel.pipeline.runtime import Pipeline
from weft.parallel.pipeline.stages import PipelinePlan


DEFAULT_DATASET = "weft.demo.data:digits"


def default_dataset():
    """(train, test) of `DEFAULT_DATASET` with ``flat=True`` (named, not imported: the demo
    package sits above this layer)."""
    try:
        mod, attr = load_module(DEFAULT_DATASET)
    except PlanError:
        raise PlanError(f"the model spec defines no dataset() and the default {DEFAULT_DATASET} "
                        "cannot be imported; define dataset() returning (train, test)") from None
    return getattr(mod, attr)(flat=True)


def rank_main(plan_dict: dict, spec: str, schedule: str, epochs: int, lr: float,
              chunks: int, record: bool, max_steps: int | None = None) -> dict:
    """One rank: build the model, keep its stage, train, return losses/time/events/weights."""
    plan = PipelinePlan.from_dict(plan_dict)
    model = load_model(spec)
    loss_fn = extra(spec, "loss_fn", torch.nn.functional.cross_entropy)
    train, _ = extra(spec, "dataset", default_dataset)()
    x, y = train[:]
    make = extra(spec, "example_input")
    pipe = Pipeline.from_plan(model, plan, loss_fn, schedule, chunks_per_stage=chunks,
                              optimizer=lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
                              record=record,
                              example_input=make(plan.micro_batch) if make else None)
    mb, M = plan.micro_batch, plan.microbatches
    batch = mb * M
    losses, samples, steps = [], 0, 0
    dist.barrier()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(epoch)
        perm = torch.randperm(len(x), generator=g)
        n = len(x) // batch * batch
        if max_steps is not None:
            n = min(n, (max_steps - steps) * batch)
        if n <= 0:
            break
        xe, ye = x[perm[:n]], y[perm[:n]]
        if schedule == "pipedream":
            losses += pipe.train_async(list(xe.split(mb)), list(ye.split(mb)))
        else:
            for xb, yb in zip(xe.split(batch), ye.split(batch)):
                loss = pipe.step(xb, yb)
                if loss is not None:
                    losses.append(loss)
        samples += n
        steps += n // batch
    dist.barrier()
    elapsed = time.perf_counter() - t0
    return {"rank": dist.get_rank(), "losses": losses, "elapsed": elapsed, "samples": samples,
            "events": pipe.events, "state": pipe.state_by_layer()}


def evaluate(spec: str, states: list[dict]) -> float | None:
    """Test accuracy of the model assembled from every rank's layers."""
    from weft.parallel.pipeline.layers import as_sequential

    make = extra(spec, "example_input")
    model = as_sequential(load_model(spec), make(2) if make else None)
    for st in states:
        for layer, sd in st.items():
            model[layer].load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    _, test = extra(spec, "dataset", default_dataset)()
    xt, yt = test[:]
    with torch.no_grad():
        out = model(xt)
    if out.dim() != 2:
        return None
    return (out.argmax(1) == yt).float().mean().item()
