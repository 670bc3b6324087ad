"""The GPT example as benchmarks/planner.py's parts use it: configurations, the profiled
workload, a grid of hand-written plans, and whether network namespaces can be made."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "examples" / "gpt.py")
GPT = {"d_model": 128, "n_head": 4, "n_layer": 4, "block": 32}
GPT_QUICK = {"d_model": 64, "n_head": 4, "n_layer": 2, "block": 32}


def gpt_model(cfg):
    sys.path.insert(0, str(ROOT / "examples"))
    import gpt

    return gpt, gpt.model(**cfg)


def workload(cfg, micro_batch: int, repeats: int):
    from weft.planner.profile_units import profile_workload
    from weft.planner.tp_rules import megatron_rules

    gpt, model = gpt_model(cfg)
    rules = megatron_rules(model)
    wl = profile_workload(model, gpt.example_input, micro_batch, rules, repeats=repeats,
                          statistic="min")
    return wl, rules


def grid(world: int, rules, n_layer: int = 4):
    """Hand-written plans of the GPT example for `world` ranks (weft.plan/1 dicts)."""
    cut = f"blocks.{n_layer // 2}"
    tp = [{"module": r.module, **({"style": r.style} if r.style else {}),
           **({"divide": list(r.divide)} if r.divide else {})} for r in rules]
    half = world // 2
    g = {f"dp{world}": {"mesh": {"dp_replicate": world}, "data_parallel": {"replicate": "weft"}},
         f"fsdp{world}": {"mesh": {"dp_shard": world},
                          "data_parallel": {"shard_modules": ["blocks.*"]}},
         f"dp{world}+ckpt": {"mesh": {"dp_replicate": world},
                             "data_parallel": {"replicate": "weft"},
                             "activation_checkpoint": ["blocks.*"]},
         f"dp{half}xtp2": {"mesh": {"dp_replicate": half, "tp": 2}, "tensor_parallel": tp,
                           "data_parallel": {"replicate": "weft"}},
         f"pp2xdp{half}": {"mesh": {"pp": 2, "dp_replicate": half},
                           "pipeline": {"split": [cut], "schedule": "1f1b",
                                        "microbatches": 4}},
         f"tp{world}": {"mesh": {"tp": world}, "tensor_parallel": tp}}
    if world >= 4:
        g[f"hsdp{half}x2"] = {"mesh": {"dp_replicate": half, "dp_shard": 2},
                              "data_parallel": {"replicate": "fsdp",
                                                "shard_modules": ["blocks.*"]}}
        g["pp2xfsdp2"] = {"mesh": {"pp": 2, "dp_shard": half},
                          "pipeline": {"split": [cut], "schedule": "gpipe",
                                       "microbatches": 2}}
    return {k: {"format": "weft.plan/1", "name": k, **v} for k, v in g.items()}


def netns_ok() -> tuple[bool, str]:
    from weft.collectives.emulate.netns import available

    return available()
