"""The GPT section of benchmarks/pipeline.py: examples/gpt.py split at block boundaries.

On 2 local gloo ranks (CPU, one thread each): weft's 1F1B-flush vs
torch.distributed.pipelining's Schedule1F1B on the same split (equal blocks per stage; torch
runs the very stage modules `weft.parallel.pipeline.layers.split_by_names` returns), and the
planner's best 2-stage partition (`partition_stages`, from a solo profile taken on the
ranks and the measured link) vs equal blocks, both weft 1F1B. Each throughput is the best of
`reps` interleaved repetitions of `steps` steps; weft vs torch is the median over
repetitions of their ratio within a repetition (as the MLP section).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gpt.py"
# a GPT-2-like shape at CPU scale: the vocabulary projection is heavy next to one block
CONFIG = {"n_layer": 8, "d_model": 64, "n_head": 4, "block": 32, "vocab": 2048}
M, MB = 8, 8  # micro-batches per step, sequences per micro-batch


def gpt():
    from weft.model_spec import load_module

    return load_module(str(EXAMPLE))[0]


def model():
    return gpt().model(**CONFIG)


def _profile():
    """Solo profile (each rank in turn, the other in a barrier; min statistic), averaged."""
    from _pipeline_probes import solo_profile

    return solo_profile(model, gpt().example_input(MB, CONFIG["block"]) % CONFIG["vocab"],
                        repeats=5)


def _weft(plan, x, y):
    from weft.parallel.pipeline import Pipeline

    pipe = Pipeline.from_plan(model(), plan, gpt().loss_fn, "1f1b",
                              optimizer=lambda p: torch.optim.SGD(p, lr=0.01))
    return lambda k: [pipe.step(x, y) for _ in range(k)]


def _torch(split_points, x, y):
    from _pipeline_probes import torch_1f1b

    from weft.parallel.pipeline.layers import split_by_names

    s, n = dist.get_rank(), dist.get_world_size()
    return torch_1f1b(split_by_names(model(), split_points)[s], s, n, M, gpt().loss_fn, x, y)


def rank_main(steps: int, reps: int) -> dict:
    from _pipeline_probes import local_topology, pingpong, timed

    from weft.planner import PlannerSettings, equal_blocks, partition_stages

    bw, lat = pingpong()
    prof = _profile()
    topo = local_topology(bw, lat)
    kw = dict(micro_batch=MB, microbatches=M, settings=PlannerSettings(cpu_copy_bw=bw))
    opt_plan = partition_stages(prof, topo, 2, **kw)
    eq_plan = equal_blocks(prof, topo, 2, **kw)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, CONFIG["vocab"], (M * MB, CONFIG["block"]), generator=g)
    y = torch.randint(0, CONFIG["vocab"], (M * MB, CONFIG["block"]), generator=g)
    runs = {"gpt_weft_1f1b": _weft(eq_plan, x, y), "gpt_torch_1f1b": _torch(eq_plan.split_points,
                                                                             x, y),
            "gpt_weft_1f1b_optimal": _weft(opt_plan, x, y)}
    for fn in runs.values():  # warm-up (shape passes, gloo pairs)
        fn(1)
    times = {k: [] for k in runs}
    names = list(runs)
    for i in range(reps):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(timed(runs[name], steps))
    return {"times": times, "opt": opt_plan.to_dict(), "eq": eq_plan.to_dict(), "bw": bw,
            "lat": lat, "layers": [l.name for l in prof.layers]}


def figures(res, steps: int, con) -> list[dict]:
    """Print the GPT section's table and conditions; its figures."""
    from _common import figure
    from rich.table import Table

    samples = steps * M * MB
    rate = {k: samples / min(t) for k, t in res["times"].items()}
    t = Table(title=f"GPT (examples/gpt.py {CONFIG}), 2 gloo ranks, {M} micro-batches of {MB} "
                    f"sequences")
    for col in ("run", "sequences/s (best rep)", "median rep"):
        t.add_column(col)
    for k, v in rate.items():
        t.add_row(k, f"{v:,.0f}", f"{samples / np.median(res['times'][k]):,.0f}")
    con.print(t)
    eq, opt = res["eq"], res["opt"]
    con.print(f"layers {res['layers']}; equal blocks: split at {eq['split_points']} "
              f"{[s['layers'] for s in eq['stages']]}; optimal 2-stage: "
              f"{[s['layers'] for s in opt['stages']]} (predicted bottleneck "
              f"{opt['bottleneck_s'] * 1e3:.2f} vs {eq['bottleneck_s'] * 1e3:.2f} ms per step); "
              f"link {res['bw'] / 1e9:.2f} GB/s, {res['lat'] * 1e6:.0f} us")
    tw, tt = np.array(res["times"]["gpt_weft_1f1b"]), np.array(res["times"]["gpt_torch_1f1b"])
    return [figure("gpt_weft_1f1b_vs_torch_pipelining_1f1b", np.median(tt / tw), "x", 1.0),
            figure("gpt_weft_1f1b_vs_torch_pipelining_1f1b_best_reps", tt.min() / tw.min(), "x"),
            figure("gpt_optimal_vs_equal_blocks",
                   rate["gpt_weft_1f1b_optimal"] / rate["gpt_weft_1f1b"], "x"),
            figure("gpt_weft_1f1b_sequences_per_s", rate["gpt_weft_1f1b"], "sequences/s")]
