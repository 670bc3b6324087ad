"""Train a model spec with a pipeline plan on local gloo ranks (what `weft train --plan` runs).

    summary = train_plan("plan.json", schedule="1f1b", epochs=3)   # prints as it goes

`train_plan` checks everything in the parent before a rank starts (the plan, the model file,
which it finds absolute or next to the plan and warns about if it changed since planning,
and that the model still has the layers the plan was made for), trains on `workers` local
ranks (`rank_main`), evaluates the assembled model (`evaluate`) and prints the measured
throughput next to the plan's prediction. A spec without ``dataset()`` trains on
`DEFAULT_DATASET`, scikit-learn's digits flattened to 64 features (``digits(flat=True)``),
resolved by name through `weft.model_spec` at run time: the demo data sits in a higher layer
than the runtime, which therefore never imports it.
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
    losses, samples, steps, first = [], 0, 0, None
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
                if first is None:  # the first step includes the shape pass
                    first = time.perf_counter() - t0
        samples += n
        steps += n // batch
    dist.barrier()
    elapsed = time.perf_counter() - t0
    return {"rank": dist.get_rank(), "losses": losses, "elapsed": elapsed, "samples": samples,
            "first_step": first or 0.0, "batch": batch,
            "events": pipe.events, "state": pipe.state_by_layer()}


def evaluate(spec: str, states: list[dict], trace: str = "auto",
             output: str | None = None, micro_batch: int = 2) -> float | None:
    """Test accuracy of the model assembled from every rank's layers (in eval mode: batch
    norm uses the running statistics the stages kept); None unless the model outputs
    (batch, classes)."""
    from weft.parallel.pipeline.layers import as_sequential

    make = extra(spec, "example_input")
    model = as_sequential(load_model(spec), make(micro_batch) if make else None, trace, output)
    for st in states:
        for layer, sd in st.items():
            model[layer].load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    model.eval()
    _, test = extra(spec, "dataset", default_dataset)()
    xt, yt = test[:]
    with torch.no_grad():
        out = model(xt)
    if out.dim() != 2:
        return None
    return (out.argmax(1) == yt).float().mean().item()


def prepare(plan_path, model: str | None = None) -> tuple[PipelinePlan, str]:
    """(plan, absolute model spec) checked in the parent: the plan loads (a changed model
    file warns), the spec imports, and the model has the layers the plan was made for (a plan
    given by split points is resolved here)."""
    from weft.model_spec import resolve
    from weft.parallel.pipeline.layers import as_sequential
    from weft.parallel.pipeline.runtime import check_layers

    plan = PipelinePlan.load(plan_path)
    spec = model or plan.model
    if not spec:
        raise PlanError(f"{plan_path} stores no model spec; pass --model path.py[:attr]")
    spec = resolve(spec)
    make = extra(spec, "example_input")
    layers = as_sequential(load_model(spec), make(plan.micro_batch) if make else None,
                           plan.trace, plan.output)
    plan.resolve(layers)
    check_layers(plan, layers)
    return plan, spec


def predicted_samples_per_s(plan: PipelinePlan, schedule: str) -> float | None:
    """The plan's prediction for `schedule` (``extra.predicted``), else its steady state."""
    pred = (plan.extra.get("predicted") or {}).get(schedule) or {}
    return pred.get("samples_per_s") or plan.predicted_samples_per_s or None


def train_plan(plan_path, model: str | None = None, schedule: str = "1f1b", epochs: int = 1,
               lr: float = 0.05, chunks: int = 2, timeline: str | None = None,
               timeout: float = 120.0, max_steps: int | None = None, console=None) -> dict:
    """`weft train --plan`: check in the parent, train on local ranks, evaluate, and print the
    measured throughput next to the predicted one. Returns the summary printed."""
    from weft.launch import launch
    from weft.parallel.pipeline.schedule import SCHEDULES
    from weft.parallel.pipeline.timeline import bubble_fraction, draw

    if schedule not in SCHEDULES:
        raise PlanError(f"--schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    say = console.print if console is not None else print
    plan, spec = prepare(plan_path, model)
    chunks = chunks if schedule == "interleaved" else 1
    say(f"training {spec} with {plan.num_stages} stages on {plan.workers} local ranks, "
        f"schedule {schedule}, {plan.microbatches} micro-batches of {plan.micro_batch}")
    results = launch(rank_main, plan.workers, timeout=timeout,
                     args=(plan.to_dict(), spec, schedule, epochs, lr, chunks, bool(timeline),
                           max_steps))
    elapsed = max(r["elapsed"] for r in results)
    samples = results[0]["samples"]
    first = max(r["first_step"] for r in results)
    steady = (samples - results[0]["batch"]) / (elapsed - first) \
        if samples > results[0]["batch"] and elapsed > first else None
    losses = [l for r in results for l in r["losses"]]
    summary = {"stages": plan.num_stages, "workers": plan.workers, "samples": samples,
               "elapsed_s": elapsed, "measured_samples_per_s": samples / elapsed,
               "steady_samples_per_s": steady,
               "predicted_samples_per_s": predicted_samples_per_s(plan, schedule),
               "final_loss": sum(losses[-5:]) / len(losses[-5:]) if losses else None,
               "accuracy": evaluate(spec, [r["state"] for r in results], plan.trace,
                                    plan.output, plan.micro_batch)}
    say(f"{samples} samples in {elapsed:.2f} s: {samples / elapsed:,.0f} samples/s")
    pred = summary["predicted_samples_per_s"]
    if steady:
        line = f"measured {steady:,.0f} samples/s after the first step"
        if pred:
            line += (f", predicted {pred:,.0f} samples/s ({schedule}, from the plan): "
                     f"measured / predicted {steady / pred:.2f}")
        say(line)
    if summary["final_loss"] is not None:
        say(f"final loss {summary['final_loss']:.4f}")
    if summary["accuracy"] is not None:
        say(f"test accuracy {summary['accuracy']:.2%}")
    if timeline:
        events = []
        for r in results:  # the last two steps of each rank (the whole run is unreadable)
            fs = sorted(e[4] for e in r["events"] if e[1] == "F")
            cut = fs[-min(len(fs), 2 * plan.microbatches)] if fs else 0.0
            events += [e for e in r["events"] if e[4] >= cut]
        summary["bubble"] = bubble_fraction(events, plan.workers)
        say(f"measured bubble fraction {summary['bubble']:.1%}")
        say(f"timeline written to {draw(events, timeline, schedule)}")
    return summary
