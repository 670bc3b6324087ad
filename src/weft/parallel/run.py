"""`weft train --plan plan.yaml --model SPEC`: train a model spec under a weft.plan/1 plan.

The parent checks everything before any rank starts: the plan file (format and fields),
the model spec (loaded once: model, `dataset()`, `loss_fn`), the plan against the model and
the world size (weft.plan.check: patterns, degrees, split points, and memory per rank when
the device memory is known or given), the plan's `placement` against the devices the ranks
will name ($WEFT_DEVICE: distinct, all in the placement), and the global batch against the
data-parallel degree and the micro-batches. An error reads `weft: error: <file>: <field>: <problem>` (exit 2)
and nothing is started.

Then `--nproc-per-node` local ranks (default 4), or the processes torchrun started, run
`train_rank`: `weft.parallelize(model, plan)`, the spec's `optimizer(params)` (or Adam at
--lr), and `model.step(x, y, loss_fn)` over `model.loader(train_set, global_batch)`. Rank 0
shows a progress bar (loss, tokens/s or samples/s, peak memory of every rank) unless
--quiet; the run folder `<out>/<timestamp>/` gets report.json and loss.png.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from weft.errors import PlanError

DEFAULT_RANKS = 4


@dataclass
class TrainConfig:
    plan: dict            # the plan as data (weft.plan.to_dict), resolved for `world`
    plan_path: str
    spec: str             # the model spec, its file made absolute
    world: int
    global_batch: int
    epochs: int
    max_steps: int | None
    lr: float | None      # None: the spec's optimizer(params) if it has one, else Adam(1e-3)
    seed: int = 0
    progress: bool = True
    resume: str | None = None
    save: str | None = None
    device_memory: float | None = None


def plan_kind(path: str) -> str:
    """'weft' for a weft.plan/1 file (weft.parallelize), 'pipeline' for a pipeline plan
    from `weft plan pipeline`; a PlanError naming the file for anything else."""
    import yaml

    from weft.parallel.pipeline.stages import FORMAT as PIPELINE
    from weft.plan.format import FORMAT

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read plan file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == PIPELINE:
        return "pipeline"
    if (isinstance(fmt, str) and fmt.startswith("weft.plan/")) or p.suffix in (".yaml", ".yml") \
            or (fmt is None and isinstance(data, dict) and "mesh" in data):
        return "weft"  # weft.plan.load names what is wrong with it
    raise PlanError(f"{path}: format: {fmt!r} is not a weft plan ({FORMAT!r}, for "
                    f"weft.parallelize) and not a weft pipeline plan ({PIPELINE!r}, from "
                    "`weft plan pipeline`)")


def _named(source: str, fn, *args, **kw):
    """fn(...) with PlanErrors starting with `source` (the plan file)."""
    try:
        return fn(*args, **kw)
    except PlanError as exc:
        if str(exc).startswith(f"{source}: "):
            raise
        raise PlanError(f"{source}: {exc}") from None


def micro_example(spec: str, batch: int, parts: int):
    """A function giving batch // parts of the spec's example inputs (None if the spec has
    none): what torch.export captures a forward on where torch.fx cannot trace it."""
    from weft.model_spec import input_maker

    make = input_maker(spec)
    if make is None or batch % parts:
        return None
    return lambda: make(batch // parts)


def prepare(args) -> TrainConfig:
    """Everything checked in the parent; a TrainConfig the ranks run."""
    import weft.plan as wp
    from weft.launch import env_rendezvous
    from weft.model_spec import SpecError, extra, load_model, resolve

    path = str(args.plan)
    if getattr(args, "timeline", None):
        raise PlanError(f"{path}: --timeline draws weft's own pipeline runtime; it needs a "
                        "pipeline plan from `weft plan pipeline`")
    plan = wp.load(path)
    if not args.model:
        raise PlanError(f"{path}: --model: a weft.plan/1 plan holds no model; pass --model "
                        "path.py[:attr] (e.g. examples/gpt.py)")
    spec = resolve(args.model)
    model = load_model(spec)
    for name in ("dataset", "loss_fn"):
        if not callable(extra(spec, name)):
            raise SpecError(f"model spec {args.model!r}: defines no {name}"
                            f"{'()' if name == 'dataset' else ''}; `weft train` needs "
                            "dataset() -> (train, test) and loss_fn(output, target)")
    if env_rendezvous():
        world = int(os.environ["WORLD_SIZE"])
    else:
        world = args.nproc_per_node if args.nproc_per_node is not None else DEFAULT_RANKS
        if world < 1:
            raise PlanError(f"--nproc-per-node: must be >= 1, got {world}")
    memory = args.device_memory
    if memory is None and _backend(args, world) == "nccl":
        memory = float(torch.cuda.get_device_properties(0).total_memory)
    plan = wp.check(plan, model, world, memory, source=path)
    if plan.placement:  # the devices the ranks will name ($WEFT_DEVICE), before they start
        from weft.parallel.mesh import check_launch_placement

        _named(path, check_launch_placement, plan.placement, world, env_rendezvous())
    m = plan.mesh
    per = m.dp
    batch = args.global_batch
    if m.pp > 1:
        from weft.parallel.pp import check_pipeline
        from weft.parallel.split import split_model

        per *= plan.pipeline.microbatches
        _named(path, check_pipeline, plan)
        _named(path, split_model, model, plan.pipeline.split, micro_example(spec, batch, per))
    if batch % per:
        what = f"dp={m.dp}" + (f" x microbatches={plan.pipeline.microbatches}" if m.pp > 1 else "")
        raise PlanError(f"--global-batch: {batch} does not split into {what} (= {per}) equal "
                        f"parts under {path} on {world} ranks")
    if args.resume and not (Path(args.resume) / "weft.json").is_file():
        raise PlanError(f"--resume: {args.resume} is not a weft checkpoint folder (no weft.json)")
    return TrainConfig(plan=wp.to_dict(plan), plan_path=path, spec=spec, world=world,
                       global_batch=batch, epochs=args.epochs or 1, max_steps=args.max_steps,
                       lr=args.lr, seed=args.seed, progress=not args.quiet,
                       resume=str(args.resume) if args.resume else None,
                       save=str(args.save) if args.save else None, device_memory=memory)


def _backend(args, world: int) -> str:
    b = getattr(args, "backend", "auto") or "auto"
    if b == "auto":
        return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world \
            else "gloo"
    return b


def train_plan(args) -> int:
    """`weft train --plan <weft.plan/1 file>`: check, run on the ranks, write the report."""
    from weft.launch import env_rendezvous, launch, run

    cfg = prepare(args)
    backend = _backend(args, cfg.world)
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        from weft.parallel.report import ranks

        m = cfg.plan["mesh"]
        print(f"training {cfg.spec} under {cfg.plan_path} on {ranks(cfg.world)} ({backend}): "
              + " x ".join(f"{d}={v}" for d, v in m.items())
              + f"; global batch {cfg.global_batch}", flush=True)
    if env_rendezvous():  # torchrun (or any env:// launcher) started this process as one rank
        result = run(train_rank, args=(cfg,), backend=None if args.backend == "auto" else backend,
                     timeout=args.timeout)
        if result["rank"] != 0:
            return 0
        results = [result]
    else:
        results = launch(train_rank, cfg.world, args=(cfg,), backend=backend,
                         timeout=args.timeout)
    from weft.parallel.report import write_report

    write_report(cfg, results[0], args.out, backend)
    return 0


# -- in every rank ------------------------------------------------------------------------

def _peak_memory(device: torch.device) -> float:
    """Bytes: the CUDA allocator's peak on a GPU, the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0


def train_rank(cfg: TrainConfig) -> dict:
    from weft.model_spec import extra, load_model
    from weft.parallel.apply import parallelize
    from weft.parallel.report import Progress

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.seed)
    # the spec's example batch, made only if torch.export must capture a pipelined model
    # (prepare checked the batch splits)
    model = parallelize(load_model(cfg.spec), cfg.plan, memory=cfg.device_memory,
                        example_input=micro_example(cfg.spec, cfg.global_batch, 1))
    train_set = extra(cfg.spec, "dataset")()[0]
    loss_fn, make_opt = extra(cfg.spec, "loss_fn"), extra(cfg.spec, "optimizer")
    if cfg.lr is None and callable(make_opt):
        opt = make_opt(model.parameters())
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr or 1e-3)
    start = int(model.load(cfg.resume, opt).get("step", 0)) if cfg.resume else 0
    loader = model.loader(train_set, batch_size=cfg.global_batch, seed=cfg.seed)
    per_epoch = len(loader)
    if per_epoch == 0:
        raise PlanError(f"--global-batch: {cfg.global_batch} is more than the "
                        f"{len(train_set)} training samples")
    total = per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, start + cfg.max_steps)
    losses, memory, step = [], [0.0] * world, start
    bar = Progress(cfg, world, model, show=cfg.progress and rank == 0)
    t0 = time.perf_counter()
    with bar:
        for epoch in range(start // per_epoch, cfg.epochs):
            loader.sampler.set_epoch(epoch)
            for i, (x, y) in enumerate(loader):
                if epoch * per_epoch + i < start:
                    continue  # trained before the checkpoint
                if step >= total:
                    break
                loss = model.step(x, y, loss_fn)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                # one small all-reduce: the mean loss over the ranks that have one (the
                # last stage's), and every rank's peak memory in its own slot
                stats = torch.zeros(2 + world, dtype=torch.float64)
                if loss is not None:
                    stats[0], stats[1] = float(loss), 1.0
                stats[2 + rank] = _peak_memory(model.device)
                stats = stats.to(model.device)
                dist.all_reduce(stats)
                stats = stats.cpu()
                losses.append(float(stats[0] / stats[1]))
                memory = stats[2:].tolist()
                bar.update(step, total, losses[-1], x, memory)
    seconds = time.perf_counter() - t0
    if cfg.save:
        model.save(cfg.save, opt, step=step)
    return {"rank": rank, "losses": losses, "memory": memory, "seconds": seconds,
            "start": start, "steps": step - start, "unit": bar.unit, "per_step": bar.per_step,
            "rate": bar.steady_rate(), "device": str(model.device), "config": asdict(cfg)}
