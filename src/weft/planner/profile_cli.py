"""`weft profile memory` (allocated bytes over one training step) and `weft profile offsets`
(launch offsets that interleave the memory peaks of co-located waves or jobs)."""

from __future__ import annotations

from pathlib import Path

from weft.errors import PlanError


def _batch(spec: str, b: int, input_shape: str | None):
    """(x, y or None) of `b` samples: the spec's example_batch(b) when it has one (synthetic
    inputs and labels), else its dataset, else its example_input (or --input-shape) without
    labels."""
    import torch

    from weft.model_spec import extra

    make_xy = extra(spec, "example_batch")
    if make_xy is not None:
        xy = make_xy(b)
        if not (isinstance(xy, tuple) and len(xy) == 2 and isinstance(xy[0], torch.Tensor)):
            raise PlanError(f"{spec}: example_batch({b}) must return (inputs, labels or None)")
        return xy
    data = extra(spec, "dataset")
    if data is not None:
        train = data()[0]
        if len(train) < b:
            raise PlanError(f"--batch {b}: the dataset of {spec} has only {len(train)} samples")
        xs, ys = zip(*(train[i] for i in range(b)))
        return torch.stack(xs), torch.as_tensor(ys)
    make = extra(spec, "example_input")
    if make is not None:
        return make(b), None
    if not input_shape:
        raise PlanError(f"{spec} defines no example_batch(), dataset() or example_input(); pass "
                        "--input-shape, e.g. --input-shape 64 or 3,32,32")
    try:
        dims = [int(d) for d in input_shape.split(",")]
    except ValueError:
        raise PlanError(f"--input-shape {input_shape!r}: expected integers like 3,32,32") from None
    return torch.randn(b, *dims), None


def _profile_memory(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from weft.model_spec import extra, load_model
    from weft.planner.memprofile import plot_profile, profile_memory
    from weft.runs import run_dir, write_json
    from weft.units import fmt_bytes

    batches = sorted(set(args.batch))
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise PlanError(f"--device {args.device}: CUDA is not available here")
    model = load_model(args.model)
    loss_fn = extra(args.model, "loss_fn")
    opt = extra(args.model, "optimizer")
    opt_kw = {"optimizer": opt} if opt is not None else {}
    out = Path(args.out) if args.out else run_dir("runs/profile")
    profiles = []
    for b in batches:
        x, y = _batch(args.model, b, args.input_shape)
        prof = profile_memory(model, x, y, loss_fn if y is not None else None,
                              warmup=args.warmup, device=args.device, timing=args.timing,
                              **opt_kw)
        prof.meta["model_spec"] = args.model
        prof.save(out / f"memory_b{b}.json")
        profiles.append(prof)
    plot_profile(profiles, out / "memory.png", title=f"{Path(args.model.split(':')[0]).name}: "
                 "allocated memory over one training step", budget=args.budget)
    t = Table(title=f"memory over one training step ({profiles[0].method})")
    for col in ("batch", "step (s)", "at start", "peak", "forward ends (s)"):
        t.add_column(col)
    for p in profiles:
        t.add_row(str(p.batch_size), f"{p.period:.3f}", fmt_bytes(p.baseline), fmt_bytes(p.peak),
                  f"{p.marks.get('forward_end', float('nan')):.3f}")
    con = Console()
    con.print(t)
    if args.waves > 1 or args.budget:
        report = _offsets_report(profiles, args.waves, args.budget, args.bins)
        write_json(out / "offsets.json", report)
        _print_offsets(con, report)
    con.print(f"wrote {out}")
    return 0


def _offsets_report(profiles, waves: int, budget: float | None, bins: int) -> dict:
    """Tick-tock `waves` waves of the largest profiled batch; with a budget, what fits."""
    from weft.planner.offsets import LinearMemory, max_batch, max_waves, plan_offsets

    top = profiles[-1]
    arr = top.bins(bins)
    plan = plan_offsets([arr] * max(waves, 2))
    report = {"batch": top.batch_size, "waves": max(waves, 2), "bins": bins,
              "period_s": top.period, "plan": plan.to_dict()}
    if budget:
        limit = 4  # waves searched; both counts stop there, so they compare
        k, _ = max_waves(arr, budget, limit=limit)
        report["budget_bytes"] = budget
        report["max_waves_limit"] = limit
        report["max_waves_offset"] = k
        report["max_waves_gang"] = min(limit, int(budget // arr.max())) if arr.max() > 0 else limit
        if len(profiles) >= 2:
            lo = profiles[0]
            mem = LinearMemory(lo.batch_size, lo.bins(bins), top.batch_size, arr)
            w = max(waves, 2)
            one = max_batch(mem, budget, waves=1)
            tick = max_batch(mem, budget, waves=w, offsets=True)
            gang = max_batch(mem, budget, waves=w, offsets=False)
            report["largest_batch"] = {"one_wave": one, f"{w}_waves_offset_total": tick * w,
                                       f"{w}_waves_gang_total": gang * w,
                                       "model": f"bins interpolated linearly between batch "
                                                f"{lo.batch_size} and {top.batch_size}"}
    return report


def _print_offsets(con, report: dict) -> None:
    from weft.units import fmt_bytes

    p = report["plan"]
    offs = ", ".join(f"{f:.2f}" for f in p["offsets_fraction"])
    con.print(f"{report['waves']} waves of batch {report['batch']}: offsets (fraction of the "
              f"step) {offs}; combined peak {fmt_bytes(p['combined_peak_bytes'])} vs "
              f"{fmt_bytes(p['gang_peak_bytes'])} gang-launched ({p['ratio']:.2f}x)")
    if "budget_bytes" in report:
        def most(k):
            return f"{k} or more" if k >= report["max_waves_limit"] else str(k)
        con.print(f"budget {fmt_bytes(report['budget_bytes'])}: {most(report['max_waves_offset'])} "
                  f"wave(s) fit with offsets, {most(report['max_waves_gang'])} gang-launched "
                  f"(searched up to {report['max_waves_limit']})")
    if "largest_batch" in report:
        lb = report["largest_batch"]
        con.print("largest total batch within the budget: " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in lb.items() if k != "model") +
            f" ({lb['model']})")


def _profile_offsets(args) -> int:
    from rich.console import Console

    from weft.planner.memprofile import MemoryProfile
    from weft.planner.offsets import plan_offsets
    from weft.runs import write_json
    from weft.units import fmt_bytes

    profs = [MemoryProfile.load(p) for p in args.profiles]
    period = max(p.period for p in profs)
    arrs = [p.bins(args.bins, period) for p in profs]
    plan = plan_offsets(arrs)
    con = Console()
    for path, p, o in zip(args.profiles, profs, plan.fractions):
        con.print(f"{path}: step {p.period:.3f} s, peak {fmt_bytes(p.peak)}, "
                  f"launch at {o:.2f} of {period:.3f} s")
    con.print(f"combined peak {fmt_bytes(plan.peak)} vs {fmt_bytes(plan.gang_peak)} "
              f"gang-launched ({plan.ratio:.2f}x)")
    fits = None
    if args.budget:
        fits = plan.peak <= args.budget
        con.print(f"budget {fmt_bytes(args.budget)}: {'fits' if fits else 'does not fit'} with "
                  f"offsets; {'fits' if plan.gang_peak <= args.budget else 'does not fit'} "
                  "gang-launched")
    if args.out:
        out = Path(args.out)
        write_json(out / "offsets.json", {"profiles": list(map(str, args.profiles)),
                                          "period_s": period, "plan": plan.to_dict(),
                                          "budget_bytes": args.budget, "fits": fits})
        _plot_combined(out / "offsets.png", arrs, plan, period, args.budget)
        con.print(f"wrote {out / 'offsets.json'} and {out / 'offsets.png'}")
    return 0


def _plot_combined(path, arrs, plan, period: float, budget: float | None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from weft.atomic import save_figure
    from weft.planner.offsets import combined

    n = len(arrs[0])
    t = np.arange(n) * period / n
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.step(t, combined(arrs, [0] * len(arrs)) / 2**20, where="post", label="gang-launched")
    ax.step(t, combined(arrs, plan.offsets) / 2**20, where="post", label="planned offsets")
    if budget:
        ax.axhline(budget / 2**20, color="#d62728", ls="--", lw=1, label="budget")
    ax.set_xlabel("seconds into the common period")
    ax.set_ylabel("allocated together (MiB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def register(sub) -> None:
    from weft.args import nonneg_int, output_dir, positive_int, size

    p = sub.add_parser("profile", help="measure a training step (memory over time) and plan "
                                       "co-location offsets")
    psub = p.add_subparsers(dest="profile_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: p.print_help() or 0)
    m = psub.add_parser("memory", help="allocated bytes vs time within one training step")
    m.add_argument("model", help="model spec: path/to/file.py[:attr] or package.module[:attr]")
    m.add_argument("--batch", type=positive_int, action="append", required=True,
                   help="batch size (repeat for several; two or more let --budget say the "
                        "largest batch that fits)")
    m.add_argument("--input-shape", help="per-sample input shape when the spec defines no "
                                         "example_batch(), dataset() or example_input(), "
                                         "e.g. 3,32,32")
    m.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    m.add_argument("--warmup", type=nonneg_int, default=1, help="steps before the profiled one")
    m.add_argument("--timing", choices=("unprofiled", "profiled"), default="unprofiled",
                   help="the time axis: each phase (forward, backward, optimizer) rescaled to "
                        "unprofiled steps of the same copy (default; the profiler stretches "
                        "allocation-heavy phases most), or the profiled step's own clock")
    m.add_argument("--waves", type=positive_int, default=1,
                   help="plan offsets for this many waves of the largest batch (tick-tock: 2)")
    m.add_argument("--budget", type=size, help="device memory, e.g. 2GiB: report what fits")
    m.add_argument("--bins", type=positive_int, default=256, help="bins over one step (256)")
    m.add_argument("--out", type=output_dir, help="folder (default: runs/profile/<time>)")
    m.set_defaults(func=_profile_memory)
    o = psub.add_parser("offsets", help="launch offsets minimising the combined peak of "
                                        "co-located profiles")
    o.add_argument("profiles", nargs="+", help="memory profiles written by `weft profile memory`")
    o.add_argument("--bins", type=positive_int, default=256)
    o.add_argument("--budget", type=size, help="device memory: say whether they fit")
    o.add_argument("--out", type=output_dir, help="folder for offsets.json and offsets.png")
    o.set_defaults(func=_profile_offsets)
