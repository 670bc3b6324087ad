"""The memory model against the measured peak resident set of gloo ranks.

Method (weft.planner.measure.memory_rank): per rank, the kernel's peak resident set
(VmHWM, reset through /proc/self/clear_refs once the plan is applied) minus the resident
set before the model was built, with glibc returning every allocation of 64 KiB or more to
the system when freed (mallopt), after a warm-up run of the same plan; two steps of Adam.
"""

import sys
from pathlib import Path

import pytest

from weft.plan.io import load
from weft.plan.parse import from_dict, to_dict
from weft.planner.measure import measure, reset_peak
from weft.planner.memory import plan_memory
from weft.planner.profile_units import profile_workload
from weft.planner.shape import Shape

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "examples" / "gpt.py")
CONFIG = {"d_model": 256, "n_head": 8, "n_layer": 4, "block": 64}
BATCH = 16
TP_RULES = to_dict(load(ROOT / "examples" / "plans" / "tp.yaml"))["tensor_parallel"]

PLANS = {
    "dp": {"mesh": {"dp_replicate": 2}, "data_parallel": {"replicate": "weft"}},
    "dp+ckpt": {"mesh": {"dp_replicate": 2}, "data_parallel": {"replicate": "weft"},
                "activation_checkpoint": ["blocks.*"]},
    "fsdp": {"mesh": {"dp_shard": 2}, "data_parallel": {"shard_modules": ["blocks.*"]}},
    # no units but the root, which keeps its parameters gathered from forward to backward
    "fsdp root only": {"mesh": {"dp_shard": 2}},
    "tp": {"mesh": {"tp": 2}, "tensor_parallel": TP_RULES},
    "pp": {"mesh": {"pp": 2}, "pipeline": {"split": ["blocks.2"], "schedule": "gpipe",
                                           "microbatches": 2}},
}


@pytest.mark.slow
@pytest.mark.skipif(not reset_peak(), reason="needs Linux /proc/self/clear_refs")
def test_memory_model_within_15_percent_of_measured_peak_rss():
    sys.path.insert(0, str(ROOT / "examples"))
    import gpt

    plans = {k: from_dict({"format": "weft.plan/1", **v}) for k, v in PLANS.items()}
    rules = plans["tp"].tensor_parallel
    wl = profile_workload(gpt.model(**CONFIG), gpt.example_input, 8, rules, repeats=1)
    rows = measure(list(plans.values()), SPEC, 2, BATCH, steps=2, memory=True, config=CONFIG,
                   many=True)
    report = []
    for k, (name, plan) in enumerate(plans.items()):
        predicted = plan_memory(Shape.of(plan, wl, BATCH, 2), wl)[0]
        measured = max(r[k]["peak"] for r in rows)
        report.append((name, predicted / 2**20, measured / 2**20))
    print("\n".join(f"{n}: predicted {p:.1f} MiB, measured {m:.1f} MiB ({p / m - 1:+.1%})"
                    for n, p, m in report))
    for name, p, m in report:
        assert abs(p - m) <= 0.15 * m, report
