"""`weft plan pipeline`: profile a model, partition it for a topology, print the plan."""

from __future__ import annotations

from weft.errors import PlanError


def _sample(spec: str, args):
    import torch

    from weft.model_spec import input_maker

    make = input_maker(spec)
    if make is not None:
        return make(args.micro_batch)
    if not args.input_shape:
        raise PlanError(f"{spec} defines no example_input(batch_size) or example_batch("
                        "batch_size); pass --input-shape, "
                        "e.g. --input-shape 64 or 3,32,32")
    try:
        dims = [int(d) for d in args.input_shape.split(",")]
    except ValueError:
        raise PlanError(f"--input-shape {args.input_shape!r}: expected integers like 3,32,32") \
            from None
    return torch.randn(args.micro_batch, *dims)


def _plan_pipeline(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from weft.model_spec import fingerprint, load_model, resolve as resolve_spec
    from weft.planner import (ModelProfile, PlannerSettings, equal_layers, from_split_points,
                              partition, partition_stages, predict, profile_model)
    from weft.planner.predict import shared_across
    from weft.planner.settings import check_setting
    from weft.topology.io import resolve
    from weft.units import fmt_bytes, parse_size

    try:
        copy_bw = parse_size(args.cpu_copy_bw, "--cpu-copy-bw") if args.cpu_copy_bw else None
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    given = {"cpu_copy_bw": (copy_bw, "--cpu-copy-bw"),
             "action_overhead_s": (args.action_overhead or 0.0, "--action-overhead"),
             "step_overhead_s": (args.step_overhead or 0.0, "--step-overhead"),
             "compute_scale": (1.0 if args.compute_scale is None else args.compute_scale,
                               "--compute-scale")}
    settings = PlannerSettings(**{k: check_setting(k, v, flag) for k, (v, flag) in given.items()})
    con = Console()
    topo = resolve(args.topology)
    split = [p.strip() for p in (args.split_points or "").split(",") if p.strip()]
    if sum(map(bool, (args.equal, split, args.stages))) > 1:
        raise PlanError("--equal, --split-points and --stages each choose the stages: give one")
    depth = args.stages or (len(split) + 1 if split else None)  # one worker per stage
    if depth and args.workers not in (None, depth):
        raise PlanError(f"{depth} stages of one worker each use {depth} workers, not "
                        f"--workers {args.workers}")
    args.workers = args.workers or depth
    model = resolve_spec(args.model) if args.model else None  # absolute: runs from anywhere
    if args.profile:
        prof = ModelProfile.load(args.profile)
    else:
        if not args.model:
            raise PlanError("pass --model path.py[:attr] (or --profile profile.json)")
        prof = profile_model(load_model(model), _sample(model, args),
                             cache_dir=args.cache_dir, use_cache=not args.no_cache,
                             trace=args.trace, output=args.output)
        if args.save_profile:
            prof.save(args.save_profile)
    if args.calibrate:
        settings = _calibrate(args, con, topo, prof, settings)
    kw = dict(micro_batch=args.micro_batch, microbatches=args.microbatches, model=model,
              settings=settings, model_hash=fingerprint(model) if model else None,
              trace=args.trace, output=args.output)
    if split:
        plan = from_split_points(prof, topo, split, **kw)
    elif args.stages:
        plan = partition_stages(prof, topo, args.stages, optimizer_states=args.optimizer_states,
                                stash=args.schedule == "pipedream", **kw)
    elif args.equal:
        plan = equal_layers(prof, topo, workers=args.workers, **kw)
    else:
        plan = partition(prof, topo, workers=args.workers, optimizer_states=args.optimizer_states,
                         stash=args.schedule == "pipedream", method=args.partitioner, **kw)
    pred = predict(plan, prof, topo, args.schedule, settings=settings, contention="overlap")
    plan.extra["predicted"] = {args.schedule: pred}  # extra["settings"]: what was charged
    shared = shared_across(plan, prof)
    plan.extra["shared"] = shared
    names = plan.layer_names
    t = Table(title=f"{plan.method} pipeline plan: {len(names)} layers on {plan.workers} workers "
                    f"of {topo.name}")
    for col in ("stage", "layers", "replicas", "ranks", "devices", "time/step", "memory"):
        t.add_column(col, justify="right" if col in ("time/step", "memory", "replicas") else "left")
    for s, st in enumerate(plan.stages):
        span = f"{st.first}-{st.end - 1} ({names[st.first]}..{names[st.end - 1]})"
        t.add_row(str(s), span, str(st.replicas), ",".join(map(str, st.ranks)),
                  ",".join(st.devices), f"{st.time_s * 1e3:.3f} ms", fmt_bytes(st.memory_bytes))
    con.print(t)
    for e in shared:
        con.print(f"shared parameter {' = '.join(e['names'])} ({fmt_bytes(e['bytes'])}, layers "
                  f"{', '.join(map(str, e['layers']))}) is held by stages "
                  f"{', '.join(map(str, e['stages']))}: its gradient is summed over ranks "
                  f"{','.join(map(str, e['ranks']))} every step, so the copies stay equal")
    if shared and args.schedule == "pipedream":
        con.print("[yellow]the pipedream schedule cannot keep shared parameters equal; train "
                  "this plan with a flush schedule (1f1b, gpipe)[/yellow]")
    con.print(f"bottleneck {plan.bottleneck_s * 1e3:.3f} ms per step of {plan.microbatches} x "
              f"{plan.micro_batch} samples; predicted throughput (steady state) "
              f"{plan.predicted_samples_per_s:,.0f} samples/s, with {args.schedule} "
              f"{pred['samples_per_s']:,.0f} samples/s (bubble {pred['bubble']:.1%})")
    if args.out:
        con.print(f"plan written to {plan.save(args.out)}")
    return 0


def _calibrate(args, con, topo, prof, settings):
    """`settings` with the runtime's overheads (and, without --compute-scale and with
    --model, the compute contention) measured on local gloo ranks, one per worker."""
    from weft.planner import PlannerSettings, calibrate_local, contention_local

    workers = args.workers or len(topo.compute_devices())
    cal = calibrate_local(workers, args.microbatches, topo,
                          args.schedule if args.schedule != "pipedream" else "1f1b",
                          args.micro_batch, PlannerSettings(cpu_copy_bw=settings.cpu_copy_bw))
    s = cal.settings
    con.print(f"runtime overhead (local gloo ranks): {s.action_overhead_s * 1e6:.1f} us per "
              f"action, {s.step_overhead_s * 1e6:.0f} us per step, message latency "
              f"{s.latency_s * 1e6:.0f} us, all-reduce {s.allreduce_bw / 1e9:.2f} GB/s")
    scale = settings.compute_scale
    if args.compute_scale is not None:
        con.print(f"compute contention: not measured, --compute-scale {scale:g} given")
    elif args.model:
        measured = contention_local(workers, _sample(args.model, args), spec=args.model,
                                    profile=prof)
        scale = measured["compute_scale"]
        con.print(f"compute contention ({workers} local gloo ranks, forward+backward of "
                  "equal-compute slices of the model, all ranks at once vs one at a time): "
                  f"compute_scale {scale:.3f} (per rank "
                  f"{', '.join(f'{f:.3f}' for f in measured['factors'])})")
    else:
        con.print("compute contention: not measured (needs --model, not only --profile); "
                  "compute_scale 1")
    return s.replace(compute_scale=scale)


def register(sub) -> None:
    from weft.args import (nonneg_float, nonneg_int, output_file, positive_float,
                           positive_int)

    p = sub.add_parser("plan", help="plan parallel execution")
    psub = p.add_subparsers(dest="plan_command", metavar="KIND")
    q = psub.add_parser("pipeline", help="profile a model and partition it into pipeline stages")
    q.add_argument("--model", help="model spec: path.py[:attr] or module:attr (attr default model)")
    q.add_argument("--profile", help="use a saved profile JSON instead of profiling --model")
    q.add_argument("--topology", default="multi_node:2x4",
                   help="builder (dgx1, ring:8, multi_node:2x4) or YAML file")
    q.add_argument("--workers", type=positive_int, default=None,
                   help="number of workers (default: all)")
    q.add_argument("--micro-batch", type=positive_int, default=32)
    q.add_argument("--microbatches", type=positive_int, default=8)
    q.add_argument("--input-shape", help="per-sample input shape if the spec has no example_input")
    q.add_argument("--schedule", default="1f1b",
                   help="schedule to predict (1f1b, gpipe, pipedream)")
    q.add_argument("--optimizer-states", type=nonneg_int, default=1,
                   help="optimizer state copies per parameter (SGD momentum 1, Adam 2)")
    q.add_argument("--equal", action="store_true", help="baseline: equal layers per stage")
    q.add_argument("--stages", type=positive_int, metavar="S",
                   help="exactly S pipeline stages on S workers, the cuts chosen optimally "
                        "(instead of the DP over replication and stages)")
    q.add_argument("--split-points", metavar="NAMES",
                   help="start stages at these modules, e.g. blocks.4,blocks.8 (one worker each)")
    q.add_argument("--output", metavar="FIELD",
                   help="the field of a structured model output the loss uses (e.g. logits)")
    q.add_argument("--partitioner", default="auto", choices=("auto", "flat", "hierarchical"),
                   help="DP over all ranks (flat) or level by level: inside a host, then across "
                        "hosts (hierarchical); auto: hierarchical when the workers span >= 2 "
                        "equal hosts")
    q.add_argument("--cpu-copy-bw", help="charge each message copy to its ranks at this rate "
                   "(e.g. 2.5GB/s; loopback gloo, where the CPUs copy every message)")
    q.add_argument("--action-overhead", type=nonneg_float, metavar="SECONDS",
                   help="runtime cost per schedule action (F, B, send, recv), e.g. 1.2e-4")
    q.add_argument("--step-overhead", type=nonneg_float, metavar="SECONDS",
                   help="runtime cost per step (optimizer, flush), for the prediction")
    q.add_argument("--compute-scale", type=positive_float, metavar="FACTOR",
                   help="multiply profiled compute by this (slowdown with every rank computing "
                        "at once; --calibrate measures it)")
    q.add_argument("--calibrate", action="store_true",
                   help="measure the runtime's overheads and the compute contention on local "
                        "gloo ranks (one per worker) and plan and predict with them "
                        "(weft.planner.overhead, weft.planner.contention)")
    q.add_argument("--trace", default="auto", choices=("auto", "fx", "export"),
                   help="how a non-Sequential model is cut into layers (torch.fx, torch.export)")
    q.add_argument("--out", type=output_file, help="write the plan JSON here")
    q.add_argument("--save-profile", type=output_file,
                   help="also write the profile JSON here")
    q.add_argument("--cache-dir", help="profile cache directory (default ~/.cache/weft/profiles)")
    q.add_argument("--no-cache", action="store_true", help="always re-profile")
    q.set_defaults(func=_plan_pipeline)
    from weft.plan.cli import add_show

    add_show(psub)  # weft plan show (weft.plan/1 plans)
    from weft.planner.auto_cli import register as register_auto

    register_auto(psub)  # weft plan auto, weft plan explain
    p.set_defaults(func=lambda args: p.print_help() or 0)
