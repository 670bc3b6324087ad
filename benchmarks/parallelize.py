"""weft.parallelize vs the same composition written by hand with torch's APIs, same run.

For each plan shape on 4 local gloo ranks (CPU), trains the GPT example (examples/gpt.py)
with Adam twice: once as `weft.parallelize(model, plan)`, once composed directly with
DeviceMesh + parallelize_module + fully_shard / DDP, in rounds that alternate A B B A
(both see the same machine state, and each runs first as often as second). Each round
of a side starts with one untimed step, so that what is timed is a side's steady state,
not the switch from the other side (the two share one process's caches and allocator;
once, under load, the first step after a switch was up to 17% slower). Prints per shape
the step time of each, their paired ratio (torch time / weft time of the two rounds next
to each other, median over the rounds; aim >= 0.95: weft adds no overhead) with the
quartiles of those ratios (their spread says how much one run can tell), tokens/s and the
model-state memory per rank (local bytes of parameters, gradients and Adam state,
the largest rank; on CUDA also the allocator's peak). The weft side trains through
`model.step(x, y, loss_fn)` (the pipelined shapes need it; the others do forward+backward).
Also weft's own DataParallel (dp, dp_tp) against the torch composition, as extra rows. The
pp_tp shape by hand writes the two stage modules itself (torch's pipeline tracer would bake
the tensor-parallel head count); weft cuts the model at `blocks.<n/2>` with torch.fx.

    python benchmarks/parallelize.py [--quick] [--json out.json] [--shapes dp,fsdp]

`--quick`: a smaller model and the shapes in QUICK_SHAPES only (all of them with --shapes).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from _common import emit, figure, parser

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
WORLD = 4
TP_RULES = [{"module": "tok", "style": "rowwise"},
            {"module": "blocks.*.attn.[qkv]", "style": "colwise"},
            {"module": "blocks.*.attn", "divide": ["n_head"]},
            {"module": "blocks.*.attn.proj", "style": "rowwise"},
            {"module": "blocks.*.mlp.fc", "style": "colwise"},
            {"module": "blocks.*.mlp.proj", "style": "rowwise"},
            {"module": "head", "style": "colwise", "output_layouts": "replicate"}]
# shape -> (weft plan's mesh and data_parallel, the hand-written composition to compare)
SHAPES = {
    "dp": ({"dp_replicate": 4}, {"replicate": "ddp"}, "ddp"),
    "fsdp": ({"dp_shard": 4}, {"shard_modules": ["blocks.*"]}, "fsdp"),
    "hsdp": ({"dp_replicate": 2, "dp_shard": 2}, {"shard_modules": ["blocks.*"]}, "hsdp"),
    "tp": ({"tp": 4}, {}, "tp"),
    "dp_tp": ({"dp_replicate": 2, "tp": 2}, {"replicate": "fsdp"}, "dp_tp"),
    "fsdp_tp": ({"dp_shard": 2, "tp": 2}, {"shard_modules": ["blocks.*"]}, "fsdp_tp"),
    "pp_fsdp": ({"pp": 2, "dp_shard": 2}, {}, "pp_fsdp"),
    "pp_tp": ({"pp": 2, "tp": 2}, {}, "pp_tp"),
    # weft's own replication runtime against torch's composition for the same shape
    "dp (weft DataParallel)": ({"dp_replicate": 4}, {"replicate": "weft"}, "ddp"),
    "dp_tp (weft DataParallel)": ({"dp_replicate": 2, "tp": 2}, {"replicate": "weft"}, "dp_tp"),
}


# --quick: one shape per kind of parallelism (data, sharded, tensor inside sharded, pipeline
# with tensor), so that it stays under a minute on 2 cores
QUICK_SHAPES = ("dp", "fsdp", "fsdp_tp", "pp_tp")
MICRO = 2  # micro-batches of the pipelined shapes (GPipe, cut before the second half's blocks)


def _split(cfg):
    return f"blocks.{cfg['n_layer'] // 2}"


def _plan(shape, cfg):
    mesh, dp, _ = SHAPES[shape]
    plan = {"format": "weft.plan/1", "name": shape, "mesh": mesh, "data_parallel": dp}
    if mesh.get("tp", 1) > 1:
        plan["tensor_parallel"] = TP_RULES
    if mesh.get("pp", 1) > 1:
        plan["pipeline"] = {"split": [_split(cfg)], "schedule": "gpipe", "microbatches": MICRO}
    return plan


def _hand_pipeline(model, cfg, micro_x):
    """pp x fully_shard by hand: trace and split, shard the stage, GPipe schedule."""
    import gpt
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.pipelining import ScheduleGPipe, SplitPoint, pipeline

    mesh = init_device_mesh("cpu", (2, WORLD // 2), mesh_dim_names=("pp", "dp"))
    pipe = pipeline(model, mb_args=(micro_x,), split_spec={_split(cfg): SplitPoint.BEGINNING})
    rank = mesh.get_local_rank("pp")
    fully_shard(pipe.get_stage_module(rank), mesh=mesh["dp"])
    stage = pipe.build_stage(rank, torch.device("cpu"), group=mesh["pp"].get_group())
    sched = ScheduleGPipe(stage, n_microbatches=MICRO, loss_fn=gpt.loss_fn)
    dp_rank = mesh.get_local_rank("dp")

    def step(x, y):
        if rank == 0:
            sched.step(x)
        else:
            sched.step(target=y)
    return pipe.get_stage_module(rank), step, dp_rank, WORLD // 2


def _hand_pp_tp(model, cfg):
    """pp x tp by hand: TP on the model, the two stages written as modules (torch's tracer
    would bake the head count), a PipelineStage each, GPipe."""
    import gpt
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    mesh = init_device_mesh("cpu", (2, WORLD // 2), mesh_dim_names=("pp", "tp"))
    _tp_by_hand(model, mesh["tp"])
    k = cfg["n_layer"] // 2

    class First(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos, self.blocks = model.tok, model.pos, model.blocks[:k]

        def forward(self, idx):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
            for blk in self.blocks:
                x = blk(x)
            return x

    class Last(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks, self.ln_f, self.head = model.blocks[k:], model.ln_f, model.head

        def forward(self, x):
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.ln_f(x))

    rank = mesh.get_local_rank("pp")
    module = First() if rank == 0 else Last()
    stage = PipelineStage(module, rank, 2, torch.device("cpu"), group=mesh["pp"].get_group())
    sched = ScheduleGPipe(stage, n_microbatches=MICRO, loss_fn=gpt.loss_fn)

    def step(x, y):
        if rank == 0:
            sched.step(x)
        else:
            sched.step(target=y)
    return module, step, 0, 1


def _tp_by_hand(model, mesh):
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    styles = {"tok": RowwiseParallel(input_layouts=Replicate()),
              "head": ColwiseParallel(output_layouts=Replicate())}
    for i, blk in enumerate(model.blocks):
        blk.attn.n_head //= mesh.size()
        styles.update({f"blocks.{i}.attn.q": ColwiseParallel(),
                       f"blocks.{i}.attn.k": ColwiseParallel(),
                       f"blocks.{i}.attn.v": ColwiseParallel(),
                       f"blocks.{i}.attn.proj": RowwiseParallel(),
                       f"blocks.{i}.mlp.fc": ColwiseParallel(),
                       f"blocks.{i}.mlp.proj": RowwiseParallel()})
    parallelize_module(model, mesh, styles)


def _hand(kind, model):
    """The composition written directly with torch's APIs (what a user would write)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    def tp(mesh):
        _tp_by_hand(model, mesh)

    def shard(mesh):
        for blk in model.blocks:
            fully_shard(blk, mesh=mesh)
        fully_shard(model, mesh=mesh)

    if kind == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    if kind == "fsdp":
        shard(init_device_mesh("cpu", (WORLD,)))
    elif kind == "hsdp":
        shard(init_device_mesh("cpu", (2, 2), mesh_dim_names=("rep", "shard")))
    elif kind == "tp":
        tp(init_device_mesh("cpu", (WORLD,)))
    elif kind == "dp_tp":  # replicate (HSDP with shard size 1) x tp
        mesh = init_device_mesh("cpu", (2, 1, 2), mesh_dim_names=("rep", "shard", "tp"))
        tp(mesh["tp"])
        fully_shard(model, mesh=mesh["rep", "shard"])
    elif kind == "fsdp_tp":
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        tp(mesh["tp"])
        shard(mesh["dp"])
    return model


def _state_bytes(model, opt) -> int:
    def local(t):
        return t._local_tensor if hasattr(t, "_local_tensor") else t
    n = 0
    for p in model.parameters():
        n += local(p).numel() * p.element_size()
        if p.grad is not None:
            n += local(p.grad).numel() * p.grad.element_size()
    for st in opt.state.values():
        n += sum(local(v).numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    return n


def _runner(shape, cfg, batch, weft_side):
    import gpt

    import weft

    model = gpt.model(**cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg["vocab"], (batch, cfg["block"] + 1), generator=g)
    kind = SHAPES[shape][2]
    if weft_side:
        pm = weft.parallelize(model, _plan(shape, cfg), example_input=x[:, :-1])
        module, shard = pm, pm.shard

        def fwd_bwd(xb, yb):
            pm.step(xb, yb, gpt.loss_fn)
    else:
        if kind == "pp_fsdp":
            micro = x[:batch // (WORLD // 2) // MICRO, :-1]
            module, fwd_bwd, dp_rank, dp = _hand_pipeline(model, cfg, micro)
        elif kind == "pp_tp":
            module, fwd_bwd, dp_rank, dp = _hand_pp_tp(model, cfg)
        else:
            module = _hand(kind, model)
            dp = {"ddp": WORLD, "fsdp": WORLD, "hsdp": WORLD, "tp": 1, "dp_tp": 2,
                  "fsdp_tp": 2}[kind]
            rank = dist.get_rank()
            dp_rank = rank // (WORLD // dp) if dp < WORLD else rank  # tp is the fastest dim

            def fwd_bwd(xb, yb):
                gpt.loss_fn(module(xb), yb).backward()

        def shard(b):
            n = b.shape[0] // dp
            return b[dp_rank * n:(dp_rank + 1) * n]
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    xb, yb = shard(x[:, :-1]), shard(x[:, 1:])

    def step():
        fwd_bwd(xb, yb)
        opt.step()
        opt.zero_grad(set_to_none=False)
    return step, (module, opt)


def _timed(step, steps) -> float:
    """Mean time of `steps` steps (the slowest rank's), after one untimed step."""
    step()  # refills what the other side's round evicted; not the plan's own cost
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    t = torch.tensor([(time.perf_counter() - t0) / steps], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _worker(shapes, cfg, batch, steps, rounds):
    out = {}
    for shape in shapes:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        sides = {"weft": _runner(shape, cfg, batch, True), "torch": _runner(shape, cfg, batch, False)}
        for step, _ in sides.values():  # warm-up
            step()
            step()
        times = {k: [] for k in sides}
        for r in range(rounds):  # A B, B A, A B, ...: A B B A A B ...
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for k in order:
                times[k].append(_timed(sides[k][0], steps))
        mem = torch.tensor([float(_state_bytes(*sides["weft"][1]))])
        dist.all_reduce(mem, op=dist.ReduceOp.MAX)
        ratios = [t / w for t, w in zip(times["torch"], times["weft"])]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        out[shape] = {"weft": statistics.median(times["weft"]),
                      "torch": statistics.median(times["torch"]),
                      "ratio": statistics.median(ratios), "ratio_q1": q1, "ratio_q3": q3,
                      "state_bytes": float(mem),
                      "cuda_peak": (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
                                    else None)}
        del sides  # the next shape starts without this one's memory
        gc.collect()
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shapes", help="comma-separated plan shapes (default: all; with --quick "
                                    f"{','.join(QUICK_SHAPES)})")
    args = p.parse_args()
    default = QUICK_SHAPES if args.quick else tuple(SHAPES)
    shapes = [s.strip() for s in args.shapes.split(",")] if args.shapes else list(default)
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {unknown}; known: {list(SHAPES)}")
    from weft.launch import launch

    # rounds: even, so that each side runs first in half of them
    if args.quick:
        cfg, batch, steps, rounds = {"d_model": 64, "n_layer": 2, "block": 32, "n_head": 4}, 8, 2, 4
    else:
        cfg, batch, steps, rounds = {"d_model": 256, "n_layer": 4, "block": 128, "n_head": 8}, 16, 3, 10
    cfg = {**cfg, "vocab": 128}
    t0 = time.time()
    res = launch(_worker, WORLD, args=(shapes, cfg, batch, steps, rounds), timeout=300)[0]
    cond = (f"{WORLD} gloo ranks on CPU, 1 thread each; GPT d_model={cfg['d_model']} "
            f"n_layer={cfg['n_layer']} block={cfg['block']}; global batch {batch}; Adam; "
            f"median of {rounds} rounds A B B A of 1 untimed + {steps} timed steps")
    figures = []
    for shape in shapes:
        r = res[shape]
        tokens = batch * cfg["block"] / r["weft"]
        figures += [
            figure(f"{shape}: torch/weft step time (paired median)", r["ratio"], "x", 0.95),
            figure(f"{shape}: paired ratios, 1st quartile", r["ratio_q1"], "x"),
            figure(f"{shape}: paired ratios, 3rd quartile", r["ratio_q3"], "x"),
            figure(f"{shape}: weft step time", r["weft"] * 1e3, "ms", better="lower"),
            figure(f"{shape}: torch step time", r["torch"] * 1e3, "ms", better="lower"),
            figure(f"{shape}: weft tokens/s", tokens, "tokens/s"),
            figure(f"{shape}: model state per rank (max)", r["state_bytes"] / 2**20, "MiB",
                   better="lower"),
        ]
        if r["cuda_peak"] is not None:
            figures.append(figure(f"{shape}: CUDA peak per rank", r["cuda_peak"] / 2**20, "MiB",
                                  better="lower"))
    emit(figures, args.json, f"weft.parallelize vs torch by hand ({cond}; {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
