"""Plans: one versioned file (YAML or JSON) saying how an unmodified model is distributed.

    plan = weft.plan.load("plan.yaml")           # validated; errors name field and value
    plan = weft.plan.check(plan, model, world=4)  # resolved and checked against the model
    print(weft.plan.show(plan, model, world=4))   # mesh and what each rank holds

`weft.parallelize(model, plan)` applies a plan. This package imports only weft's
base modules, topology and collectives (it sits below weft.parallel).
"""

from weft.plan.check import check, layout, match, matching, memory_per_rank
from weft.plan.describe import (
                              RankView,
                              coords_of,
                              describe,
                              format_description,
                              groups,
                              show,
)
from weft.plan.format import (
                              DIMS,
                              FORMAT,
                              DataParallel,
                              Mesh,
                              MixedPrecision,
                              Pipeline,
                              Plan,
                              TPRule,
                              validate,
)
from weft.plan.io import dumps, load, loads, resolve, save
from weft.plan.parse import from_dict, to_dict

__all__ = ["DIMS", "FORMAT", "DataParallel", "Mesh", "MixedPrecision", "Pipeline", "Plan",
           "RankView", "TPRule", "check", "coords_of", "describe", "dumps", "format_description",
           "from_dict", "groups", "layout", "load", "loads", "match", "matching",
           "memory_per_rank", "resolve", "save", "show", "to_dict", "validate"]
