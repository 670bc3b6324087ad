#!/usr/bin/env python
"""The auto-planner, measured: predictions vs runs, the auto plan, placement, optical
fabrics, search time, collectives, memory. One run; every figure says its conditions.

    python benchmarks/planner.py --quick          # < 1 minute: no namespaces, small sizes
    python benchmarks/planner.py --json out.json  # the full run (root for namespaces)
    python benchmarks/planner.py --parts search,plans --json out.json

Parts (all by default): search (48-layer transformer on 1,024 devices of multi_node
128x8), plans (>= 6 plans of examples/gpt.py on local gloo ranks: predicted vs measured,
the auto plan vs plain DP and the best of the grid), memory (memory model vs peak RSS),
placement (emulated 2-host cluster, slow link between hosts, hosts listed alternately as
a round-robin launcher maps ranks: placed plan vs rank order), fabric (chosen optical
topology vs a ring and a torus of the same ports, emulated at 8 servers and predicted at
128), collectives (the autotuner's choice vs ring / tree / packing, loopback and emulated).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, parser  # noqa: E402

PARTS = ("search", "plans", "memory", "placement", "fabric", "collectives")


def part_functions() -> dict:
    """{part name: function(args, figs)}, each from the module of its idea."""
    import _planner_collectives
    import _planner_fabric
    import _planner_placement
    import _planner_plans

    return {"search": _planner_plans.part_search, "plans": _planner_plans.part_plans,
            "memory": _planner_plans.part_memory,
            "placement": _planner_placement.part_placement,
            "fabric": _planner_fabric.part_fabric,
            "collectives": _planner_collectives.part_collectives}


def main(argv=None) -> int:
    from _planner_collectives import SHAPES_SWEPT

    from weft.args import positive_float, positive_int

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {','.join(PARTS)}")
    p.add_argument("--world", type=positive_int, default=4, help="local gloo ranks for the plans part")
    p.add_argument("--batch", type=positive_int, default=32, help="global batch of the GPT plans")
    p.add_argument("--mbit-per-gbs", type=positive_float, default=4.0,
                   help="emulated Mbit/s per GB/s of topology bandwidth")
    p.add_argument("--fabric-mbit-per-gbs", type=positive_float, default=1.0,
                   help="the same for the fabric part (slow enough that the links, not the "
                        "2 cores, bound its step)")
    p.add_argument("--collectives-shapes", default=",".join(SHAPES_SWEPT),
                   help="comma list of the collectives part's shapes "
                        f"({', '.join(SHAPES_SWEPT)})")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    bad = [x for x in parts if x not in PARTS]
    if bad:
        p.error(f"--parts: unknown {bad}; choose from {','.join(PARTS)}")
    if args.quick:
        parts = [x for x in parts if x not in ("memory",)]
    figs: list = []
    run = part_functions()
    t0 = time.perf_counter()
    for part in parts:
        t = time.perf_counter()
        print(f"== {part}")
        run[part](args, figs)
        print(f"   ({time.perf_counter() - t:.0f} s)")
    emit(figs, args.json, f"planner ({'quick' if args.quick else 'full'}, "
                          f"{time.perf_counter() - t0:.0f} s, {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
