"""`weft plan auto` (search plans, place the best, write it) and `weft plan explain`.

    weft plan auto --model examples/gpt.py --topology multi_node:2x4 --batch 64 --out plan.yaml
    weft plan auto --model transformer:n_layer=48 --topology multi_node:128x8 --any
    weft plan auto --model examples/gpt.py --topology dgx1 --communicator weft --out plan.yaml
    weft plan explain plan.yaml --model examples/gpt.py --topology multi_node:2x4 --batch 64
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from weft.errors import PlanError


def workload_of(args):
    """(Workload, tensor-parallel rules, model or None) from --workload / --model."""
    from weft.planner.workload import Workload, parse_transformer

    rules = ()
    if getattr(args, "tp_rules", None):
        from weft.plan.io import load

        rules = load(args.tp_rules).tensor_parallel
    if args.workload:
        return Workload.load(args.workload), rules, None
    if not args.model:
        raise PlanError("pass --model (a model spec, or transformer:key=value,...) or --workload")
    if args.model.startswith("transformer:"):
        from weft.planner.tp_rules import GPT_RULES

        return parse_transformer(args.model), rules or GPT_RULES, None
    from weft.model_spec import input_maker, load_model
    from weft.planner.profile_units import profile_workload
    from weft.planner.tp_rules import megatron_rules

    model = load_model(args.model)
    make = input_maker(args.model)
    if make is None:
        raise PlanError(f"{args.model} defines no example_input(batch_size) or "
                        "example_batch(batch_size); the planner "
                        "profiles the model on it")
    if not rules:
        dropped: dict[str, str] = {}
        rules = megatron_rules(model, make(args.micro_batch), dropped)
        for group, why in dropped.items():
            print(f"tensor-parallel rules for {group} left out (tried on 2 emulated ranks): "
                  f"{why}")
        print(f"tensor-parallel rules found in the model: "
              f"{', '.join(f'{r.module} {r.style or r.divide}' for r in rules) or 'none'}")
    wl = profile_workload(model, make, args.micro_batch, rules, repeats=args.repeats)
    if args.save_workload:
        wl.save(args.save_workload)
    return wl, rules, model


def costs_of(args, topo=None, workload=None, devices: int | None = None):
    """The plan model's costs from the options; with --calibrate N, measured on N local gloo
    ranks: on a local topology (`local:N`: CPU ranks of this machine) everything
    `weft.planner.local_costs` measures, elsewhere the runtime's own costs only (this
    machine's contention and loopback collectives say nothing of another cluster's)."""
    from weft.planner.plan_cost import Costs
    from weft.topology.builders import is_local

    costs = Costs(compute_scale=args.compute_scale or 1.0,
                  optimizer_bw=args.optimizer_bw or 0.0,
                  step_overhead_s=args.step_overhead or 0.0)
    n = getattr(args, "calibrate", None)
    if n and topo is not None and is_local(topo):
        costs = _calibrated_here(args, n, topo, workload,
                                 devices or len(topo.compute_devices))
    elif n:
        from weft.planner.runtime_costs import measure_runtime_costs

        rc = measure_runtime_costs(n)
        print(f"runtime costs measured: {rc.summary()}")
        costs = rc.apply(costs)
        if topo is not None:
            print(f"({topo.name} is not this machine's local ranks: its compute contention "
                  f"and collectives are not measured; plan on local:{n} for them)")
    if n and args.optimizer_bw:  # given beats measured
        costs = replace(costs, optimizer_bw=args.optimizer_bw)
    if n and args.compute_scale:
        costs = replace(costs, compute_scale=args.compute_scale)
    if args.step_overhead:
        costs = replace(costs, step_overhead_s=args.step_overhead)
    return costs


def _calibrated_here(args, n: int, topo, workload, devices: int):
    """`weft.planner.local_costs.measure_local_costs` on n ranks for a plan on this machine."""
    from weft.planner.local_costs import measure_local_costs

    if devices != n:
        raise PlanError(f"--calibrate {n} measures {n} local ranks, but the plan is for "
                        f"{devices} devices of {topo.name}: calibrate on as many ranks as "
                        f"the plan uses (--calibrate {devices})")
    sample, spec = None, None
    model = getattr(args, "model", None)
    if model and not model.startswith("transformer:"):
        from weft.model_spec import input_maker

        make = input_maker(model)
        sample, spec = (make(args.micro_batch), model) if make is not None else (None, None)
    if spec is None:
        print("(no model to run: compute contention is not measured; --compute-scale sets it)")
    return measure_local_costs(n, workload if sample is not None else None, sample, spec=spec)


def block_pattern(workload) -> tuple[str, ...]:
    from weft.planner.shape import block_layers

    pats = []
    for i in block_layers(workload):
        for m in workload.layers[i].modules:
            p = ".".join("*" if a.isdigit() else a for a in m.split("."))
            if p not in pats:
                pats.append(p)
    return tuple(pats)


def tied_layers(workload, model) -> list[tuple[int, int, float]]:
    """(first, last, bytes) for each parameter that workload layers first < last share
    (tied weights, e.g. an embedding and the output head)."""
    def layer_of(module: str) -> int | None:
        for i, l in enumerate(workload.layers):
            if any(module == m or module.startswith(m + ".") for m in l.modules):
                return i
        return None
    from weft.plan.check import ties

    spans = set()
    for names in ties(model):
        at = {layer_of(n.rpartition(".")[0]) for n in names} - {None}
        if len(at) > 1:
            p = model.get_parameter(names[0])
            spans.add((min(at), max(at), float(p.numel() * p.element_size())))
    return sorted(spans)


def runnable(global_batch: int):
    """shape -> why weft.parallelize cannot run it (None: it can)."""
    import torch

    from weft.parallel.pp import check_pipeline
    from weft.planner.workload import Workload

    def why(shape, workload: Workload | None = None) -> str | None:
        if shape.pp == 1:
            return None
        from weft.plan.format import Mesh, Pipeline, Plan

        stages = shape.pp * shape.stages_per_rank
        plan = Plan(mesh=Mesh(shape.pp, shape.dp_replicate, shape.dp_shard, shape.tp),
                    pipeline=Pipeline(split=tuple(f"s{i}" for i in range(stages - 1)),
                                      schedule=shape.schedule, microbatches=shape.microbatches,
                                      stages_per_rank=shape.stages_per_rank))
        try:
            check_pipeline(plan, torch.empty(global_batch, 1))
        except PlanError as exc:
            return str(exc).split(":")[0]
        return None
    return why


def _table(found, title: str):
    from rich.table import Table

    from weft.units import fmt_bytes

    t = Table(title=title)
    for col in ("#", "mesh", "schedule", "micro-batches", "ckpt", "step", "samples/s",
                "memory", "bubble", "comm"):
        t.add_column(col, justify="right" if col not in ("mesh", "schedule") else "left")
    for i, e in enumerate(found.top):
        s = e.shape
        mesh = " ".join(f"{n}{getattr(s, d)}" for d, n in (("pp", "pp"), ("dp_replicate", "dp"),
                                                            ("dp_shard", "fsdp"), ("tp", "tp"))
                        if getattr(s, d) > 1) or "single"
        sched = (s.schedule + (f" x{s.stages_per_rank}" if s.stages_per_rank > 1 else "")
                 if s.pp > 1 else "-")
        t.add_row(str(i + 1), mesh, sched, f"{s.microbatches} x {s.micro_batch:g}",
                  "yes" if s.checkpoint else "no", f"{e.step_s * 1e3:.3f} ms",
                  f"{s.global_batch / e.step_s:,.0f}", fmt_bytes(e.peak_bytes),
                  f"{e.bubble:.1%}", f"{e.comm_share:.0%}")
    return t


def _auto(args) -> int:
    from rich.console import Console

    from weft.plan.io import load, save
    from weft.planner.placement import place
    from weft.planner.plan_cost import PlanModel
    from weft.planner.search import Space, search
    from weft.topology.io import resolve
    from weft.units import fmt_bytes

    con = Console(width=max(Console().width, 110))
    topo = resolve(args.topology).validate()
    wl, rules, model = workload_of(args)
    if model is not None:  # weights tied across layers: summed between stages (pp > 1)
        wl.meta["tied"] = [list(t) for t in tied_layers(wl, model)]
    pm = PlanModel(wl, topo, costs_of(args, topo, wl, args.devices))
    devs = args.devices or len(pm.net.compute_devices)
    used = pm.rank_order(devs)
    memory = args.memory or min(topo.device(d).memory for d in used)
    space = Space(schedules=args.schedules, interleaved=True,
                  checkpoint=(False, True),
                  runnable=None if args.any else runnable(args.batch),
                  communicator=args.communicator)
    found = search(wl, pm, devs, args.batch, memory, space, top=args.top)
    if not found.top:
        found.best  # noqa: B018 - raises the reason (no empty table printed before it)
    con.print(_table(found, f"plans for {wl.name} on {devs} devices of {topo.name}, batch "
                            f"{args.batch}, {fmt_bytes(memory)} per device"))
    con.print(f"searched {found.candidates} candidates ({found.pruned_memory} pruned by memory, "
              f"{sum(found.rejected.values())} rejected: {found.rejected or 'none'}), costed "
              f"{found.evaluated}, in {found.seconds:.2f} s")
    best = found.best
    placement = None
    if not args.no_place:
        placed = place(pm, best.shape, budget_s=args.place_budget)
        con.print(f"placement ({placed.method}): predicted {placed.estimate.step_s * 1e3:.3f} ms "
                  f"vs rank order {placed.rank_order.step_s * 1e3:.3f} ms "
                  f"({placed.gain:.2f}x), in {placed.seconds:.2f} s")
        if placed.devices != used:
            placement = tuple(placed.devices)
        best = placed.estimate
    if args.out:
        blocks = block_pattern(wl)
        plan = best.shape.to_plan(wl, rules, name=args.name, shard_modules=blocks,
                                  checkpoint=blocks)
        plan = _placed(plan, placement, used, args.topology)
        path = save(plan, args.out)
        plan = load(path)
        if model is not None:
            from weft.plan.check import check

            check(plan, model, devs)
        con.print(f"best plan written to {path}")
    return 0


def _placed(plan, placement, used, topology: str):
    """`plan` with its placement; with weft's communicator also the topology its
    data-parallel groups run their schedules on, and then the placement always (rank order
    if nothing better was found), so that every group knows its devices."""
    if plan.data_parallel.communicator == "weft":
        spec = str(Path(topology).resolve()) if Path(topology).is_file() else topology
        plan = replace(plan, data_parallel=replace(plan.data_parallel, topology=spec))
        placement = placement or tuple(used)
    return replace(plan, placement=placement) if placement else plan


def _explain(args) -> int:
    from weft.plan.io import load
    from weft.planner.explain import explain
    from weft.planner.plan_cost import PlanModel
    from weft.planner.shape import Shape
    from weft.topology.io import resolve

    plan = load(args.plan)
    topo = resolve(args.topology).validate()
    wl, _, _ = workload_of(args)
    world = args.world or (plan.mesh.size if plan.mesh.resolved else len(topo.compute_devices))
    pm = PlanModel(wl, topo, costs_of(args, topo, wl, world))
    shape = Shape.of(plan, wl, args.batch, world)
    est = pm.estimate(shape, list(plan.placement) if plan.placement else None)
    print(explain(est, wl, topo.name, pm.dp_algorithms(est)))
    return 0


def ranks(text: str) -> int:
    """--calibrate: a number of local ranks, at least 2 (collectives need a peer)."""
    import argparse

    from weft.args import positive_int

    n = positive_int(text)
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (ranks to measure on), got {n}")
    return n


def schedules(text: str) -> tuple[str, ...]:
    """--schedules: a comma-separated subset of gpipe,1f1b."""
    import argparse

    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ("gpipe", "1f1b")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected gpipe, 1f1b or gpipe,1f1b")
    return names


def _common(q) -> None:
    from weft.args import (
        existing_file,
        nonneg_float,
        output_file,
        positive_float,
        positive_int,
        size,
    )

    q.add_argument("--model", help="model spec (path.py[:attr]), profiled per layer, or "
                   "transformer:n_layer=48,d_model=2048,... (analytic)")
    q.add_argument("--workload", type=existing_file,
                   help="a saved workload JSON instead of --model")
    q.add_argument("--save-workload", type=output_file,
                   help="write the profiled workload JSON here")
    q.add_argument("--topology", default="multi_node:2x4", help="builder spec or YAML file")
    q.add_argument("--batch", type=positive_int, default=64, help="global batch (samples per step)")
    q.add_argument("--micro-batch", type=positive_int, default=8,
                   help="batch to profile the model at")
    q.add_argument("--repeats", type=positive_int, default=5, help="timed passes per profile")
    q.add_argument("--tp-rules", type=existing_file,
                   help="a plan file whose tensor_parallel rules to use "
                   "(default: Megatron-style rules found in the model)")
    q.add_argument("--compute-scale", type=positive_float,
                   help="multiply profiled compute (contention with all ranks busy; default 1, "
                   "or measured by --calibrate on a local topology)")
    q.add_argument("--optimizer-bw", type=size,
                   help="parameter bytes/s Adam updates, e.g. 2GB/s (default: not charged)")
    q.add_argument("--step-overhead", type=nonneg_float, help="seconds per step beyond the model")
    q.add_argument("--calibrate", type=ranks, metavar="N",
                   help="first measure costs on N (>= 2) local gloo ranks: the runtime's own "
                   "(overlap, fully_shard per call, the optimizer, the pipeline's actions; "
                   "weft.planner.runtime_costs), and with --topology local:N also compute "
                   "contention of the model and gloo's collectives (weft.planner.local_costs; "
                   "this machine's, under a minute)")


def register(psub) -> None:
    from weft.args import existing_file, nonneg_float, output_file, positive_int, size

    q = psub.add_parser("auto", help="search plans for a model on a topology; write the best")
    _common(q)
    q.add_argument("--devices", type=positive_int,
                   help="devices to use (default: all compute devices)")
    q.add_argument("--memory", type=size,
                   help="memory per device, e.g. 80GB (default: the topology's)")
    q.add_argument("--top", type=positive_int, default=10, help="plans to list")
    q.add_argument("--any", action="store_true", help="also plans weft.parallelize refuses "
                   "(e.g. a micro-batch count its pipeline schedule cannot run)")
    q.add_argument("--schedules", type=schedules, default="1f1b",
                   help="pipeline schedules to search (gpipe,1f1b; GPipe takes 1F1B's time "
                   "in the model and more memory)")
    q.add_argument("--communicator", choices=("torch", "weft"), default="torch",
                   help="data-parallel all-reduce of the plans: torch.distributed's (gloo/"
                   "NCCL ring), or weft's (ring, trees or packed spanning trees, the "
                   "autotuner's choice on the topology's links; the written plan names the "
                   "topology and the placement)")
    q.add_argument("--no-place", action="store_true", help="keep rank order")
    q.add_argument("--place-budget", type=nonneg_float, default=5.0, help="seconds for refinement")
    q.add_argument("--name", default="auto", help="name of the written plan")
    q.add_argument("--out", type=output_file,
                   help="write the best plan (weft.plan/1 YAML or JSON) here")
    q.set_defaults(func=_auto)
    e = psub.add_parser("explain", help="predicted step time and memory of a plan, term by term")
    e.add_argument("plan", type=existing_file, help="plan file (weft.plan/1)")
    _common(e)
    e.add_argument("--world", type=positive_int, help="world size for a mesh with a -1 degree")
    e.set_defaults(func=_explain)
    from weft.topology.cli import actions

    if actions() is not None:  # `weft topology optimize` needs the planner
        from weft.planner.fabric_cli import register as register_fabric

        register_fabric(actions())
