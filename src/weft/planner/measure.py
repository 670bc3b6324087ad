"""Measure a plan on live ranks: step time and peak memory of `weft.parallelize`d training.

    rows = measure(plan, "examples/gpt.py", world=4, batch=32, steps=5)   # local gloo ranks

Every rank builds the model spec's model (same seed), applies the plan with
`weft.parallelize`, and trains `steps` steps of Adam on one fixed global batch of
`example_input(batch)` (targets: the inputs shifted by one token when the input is
integer, else zeros of the output's shape) after `warmup` steps. Step time: per step the
slowest rank's time (a barrier before, the max over ranks after), median over steps.
Several plans (`many`) can be timed in interleaved rounds (`rounds`), so that they compare
as if side by side on a host whose speed drifts; each plan is built for its turn and torn
down after it with its process groups, so none is timed beside another's.

Memory (`memory=True`), per rank, measured by the kernel: the process's peak resident set
(VmHWM) minus its resident set just before the model was built, with the peak reset
(``/proc/self/clear_refs`` = 5) once the plan is applied, so the peak is training's (the
whole model that every rank builds before sharding is not counted). Large allocations go
to their own mappings (glibc's ``mmap_threshold`` fixed at 64 KiB and its trim threshold
at 128 KiB with ``mallopt``), so freed tensors leave the resident set at once; a warm-up run of the same plan on the same model first loads the
code paths (shared-library pages count as resident too).
"""

from __future__ import annotations

import functools
import gc
import statistics
import time


def fixed_mmap_threshold() -> bool:
    """Make glibc give every allocation of 64 KiB or more its own mapping (returned to the
    system when freed) and trim the heap above 128 KiB; False where that is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 65536)) and bool(libc.mallopt(-1, 131072))
    except (OSError, AttributeError):
        return False


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> bool:
    """Reset this process's peak resident set to its current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _batch(spec_mod, model, plan_obj, batch: int):
    import torch

    x = spec_mod.example_input(batch)
    if not x.is_floating_point():
        y = torch.roll(x, -1, dims=-1)
    else:
        with torch.no_grad():
            y = torch.zeros_like(model(x[:1])).repeat(batch, *([1] * (x.dim() - 1)))
    return x, y


def _train(plan_dict, spec: str, batch: int, steps: int, config: dict, timed: bool):
    import torch

    from weft.model_spec import load_module
    from weft.parallel.apply import parallelize
    from weft.plan.parse import from_dict

    mod, _ = load_module(spec)
    make = mod.model
    model = make(**config) if callable(make) and not isinstance(make, torch.nn.Module) else make
    plan = from_dict(plan_dict, "<measured plan>")
    x, y = _batch(mod, model, plan, batch)
    pm = parallelize(model, plan, example_input=x)
    opt = torch.optim.Adam(pm.parameters(), lr=1e-4)
    loss_fn = mod.loss_fn
    if pm.pipeline is None:
        xs, ys = pm.shard(x), pm.shard(y)
    else:
        dp, n = pm.dp_rank, pm.dp_size
        per = batch // n
        xs, ys = x[dp * per:(dp + 1) * per], y[dp * per:(dp + 1) * per]
    return pm, opt, xs, ys, loss_fn


def _step(pm, opt, xs, ys, loss_fn):
    pm.step(xs, ys, loss_fn)
    opt.step()
    opt.zero_grad(set_to_none=True)


def memory_rank(plan_dict: dict, spec: str, batch: int, steps: int = 2,
                config: dict | None = None, warm_config: dict | None = None) -> dict:
    """Peak training memory of this rank (see the module doc), bytes. The process groups
    the plan makes are destroyed afterwards, so a later plan measured in the same process
    does not run beside their transport threads."""
    from weft.parallel.groups import own_groups

    with own_groups():
        return _memory_rank(plan_dict, spec, batch, steps, config or {}, warm_config)


def _memory_rank(plan_dict: dict, spec: str, batch: int, steps: int, config: dict,
                 warm_config: dict | None) -> dict:
    import torch.distributed as dist

    fixed = fixed_mmap_threshold()
    pm, opt, xs, ys, loss_fn = _train(plan_dict, spec, batch, 1, warm_config or config, False)
    _step(pm, opt, xs, ys, loss_fn)
    del pm, opt, xs, ys
    gc.collect()
    dist.barrier()
    base = _status("VmRSS")
    pm, opt, xs, ys, loss_fn = _train(plan_dict, spec, batch, steps, config, False)
    gc.collect()
    ok = reset_peak()
    after_apply = _status("VmRSS")
    for _ in range(steps):
        _step(pm, opt, xs, ys, loss_fn)
    peak = _status("VmHWM")
    dist.barrier()
    del pm, opt, xs, ys, loss_fn
    return {"rank": dist.get_rank(), "peak": peak - base, "applied": after_apply - base,
            "reset": ok, "mmap_fixed": fixed}


def memory_ranks(plans: list[dict], spec: str, batch: int, steps: int = 2,
                 config: dict | None = None) -> list[dict]:
    """`memory_rank` for several plans in turn (one process start for all)."""
    return [memory_rank(p, spec, batch, steps, config) for p in plans]


def time_rank(plan_dict: dict, spec: str, batch: int, steps: int = 5,
              config: dict | None = None, warmup: int = 2) -> dict:
    """Per-step time (slowest rank, median over `steps`) after `warmup` steps."""
    import torch.distributed as dist

    times = _alone(plan_dict, spec, batch, steps, config or {}, warmup, steps)
    return {"rank": dist.get_rank(), "step_s": statistics.median(times), "steps": times}


def _alone(plan_dict: dict, spec: str, batch: int, steps: int, config: dict, warmup: int,
           timed: int) -> list[float]:
    """Build the plan, run `warmup` untimed steps and `timed` timed ones; its process groups
    are destroyed afterwards, so no later plan runs beside their transport threads
    (`weft.parallel.groups`)."""
    from weft.parallel.groups import own_groups

    with own_groups():
        step = functools.partial(_step, *_train(plan_dict, spec, batch, steps, config, True))
        for _ in range(warmup):
            step()
        times = [slowest_seconds(step) for _ in range(timed)]
        del step
    return times


def slowest_seconds(fn) -> float:
    """Run `fn()` on every rank at once: the slowest rank's seconds (a barrier before, the
    max over ranks after), the same on every rank."""
    import torch
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    fn()
    t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def time_ranks(plans: list[dict], spec: str, batch: int, steps: int = 5,
               config: dict | None = None, rounds: int = 1) -> list[dict]:
    """`time_rank` for several plans: one after the other (``rounds`` 1), or in `rounds`
    interleaved rounds (plan order forwards, then backwards, ...; in each, a plan is built,
    runs 2 untimed steps and its share of about steps / rounds timed steps, and is torn
    down with its process groups), so that a host whose speed drifts over minutes slows
    every plan alike and the plans compare as if measured side by side. Plans are never
    alive together: every gloo group's transport thread costs CPU (`weft.parallel.groups`;
    the 8 GPT plans of the planner benchmark built at once slowed dp4 by about 14%). A plan
    with a `placement` renumbers the process and cannot share it: interleaving refuses it."""
    if rounds <= 1:
        return [time_rank(p, spec, batch, steps, config=config) for p in plans]
    import torch.distributed as dist

    from weft.errors import PlanError

    placed = [p.get("name", k) for k, p in enumerate(plans) if p.get("placement")]
    if placed:
        raise PlanError(f"time_ranks: plan(s) {placed} have a placement, which renumbers the "
                         f"process: time them with rounds=1")
    per = max(1, -(-steps // rounds))
    times: list[list[float]] = [[] for _ in plans]
    for r in range(rounds):
        for k in (range(len(plans)) if r % 2 == 0 else reversed(range(len(plans)))):
            times[k] += _alone(plans[k], spec, batch, steps, config or {}, 2, per)
    return [{"rank": dist.get_rank(), "step_s": statistics.median(ts), "steps": ts}
            for ts in times]


def measure(plan, spec: str, world: int, batch: int, steps: int = 5, memory: bool = False,
            config: dict | None = None, timeout: float = 300.0, many: bool = False,
            rounds: int = 1, **kw) -> list:
    """Run `time_rank` (or `memory_rank`) on `world` local gloo ranks; one dict per rank
    (with `many`, `plan` is a list of plans and each rank returns a list, one per plan;
    `rounds` > 1 times them interleaved, see `time_ranks`)."""
    from weft.launch import launch
    from weft.model_spec import resolve
    from weft.plan.io import resolve as resolve_plan
    from weft.plan.parse import to_dict

    args = ()
    if many:
        plan_dict = [to_dict(resolve_plan(p)) for p in plan]
        fn = memory_ranks if memory else time_ranks
        args = () if memory else (rounds,)
    else:
        plan_dict = to_dict(resolve_plan(plan))
        fn = memory_rank if memory else time_rank
    return launch(fn, world, args=(plan_dict, resolve(spec), batch, steps, config or {}, *args),
                  timeout=timeout, **kw)
