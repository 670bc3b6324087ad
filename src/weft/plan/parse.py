"""Plans from and to plain data (what YAML and JSON hold); errors name source, field, value."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from weft.plan.format import (
    COMMUNICATORS,
    DIMS,
    DTYPES,
    FORMAT,
    LAYOUT,
    REPLICATE,
    STYLES,
    TORCH_SCHEDULES,
    WEFT_SCHEDULES,
    DataParallel,
    ErrorSource,
    Mesh,
    MixedPrecision,
    Pipeline,
    Plan,
    TPRule,
    validate,
)


class _Parser(ErrorSource):
    """Typed readers of plain values; each error names the field and shows the value."""

    def mapping(self, where: str, value: Any, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {value!r}")
        extra = [k for k in value if k not in allowed]
        if extra:
            raise self.fail(where, f"unknown field(s) {sorted(map(str, extra))}; "
                            f"allowed: {list(allowed)}")
        return value

    def integer(self, where: str, value: Any, lo: int, allow_minus_one: bool = False) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or not (value >= lo or (allow_minus_one and value == -1)):
            more = " or -1 (inferred)" if allow_minus_one else ""
            raise self.fail(where, f"must be an integer >= {lo}{more}, got {value!r}")
        return value

    def choice(self, where: str, value: Any, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(where, f"unknown value {value!r}; one of {list(options)}")
        return value

    def boolean(self, where: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"must be true or false, got {value!r}")
        return value

    def string(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"must be a non-empty string, got {value!r}")
        return value

    def strings(self, where: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise self.fail(where, f"must be a list of strings, got {value!r}")
        return tuple(self.string(f"{where}[{i}]", v) for i, v in enumerate(value))

    def layouts(self, where: str, value: Any) -> tuple[str, ...]:
        out = self.strings(where, value)
        for i, s in enumerate(out):
            if not LAYOUT.match(s):
                raise self.fail(f"{where}[{i}]" if len(out) > 1 else where,
                                f"unknown layout {s!r}; use 'replicate' or 'shard(<dim>)'")
        return out


def from_dict(data: Any, source: str = "<plan>") -> Plan:
    """Build and validate a Plan from plain data; errors name `source`, the field and the value."""
    p = _Parser(source)
    top = ("format", "name", "mesh", "data_parallel", "tensor_parallel", "pipeline",
           "activation_checkpoint", "mixed_precision", "placement")
    data = p.mapping("top level", data, top)
    if "format" not in data:
        raise p.fail("format", f"missing; a plan starts with 'format: {FORMAT}'")
    if data["format"] != FORMAT:
        raise p.fail("format", f"unsupported version {data['format']!r}; this weft reads {FORMAT!r}")
    name = data.get("name", "")
    if not isinstance(name, str):
        raise p.fail("name", f"must be a string, got {name!r}")

    m = p.mapping("mesh", data.get("mesh", {}), DIMS)
    mesh = Mesh(**{d: p.integer(f"mesh.{d}", m[d], 1, allow_minus_one=True) for d in m})
    inferred = [d for d in DIMS if getattr(mesh, d) == -1]
    if len(inferred) > 1:
        raise p.fail(f"mesh.{inferred[1]}", f"-1 is allowed for one dim only (also {inferred[0]})")

    dp_fields = tuple(f.name for f in fields(DataParallel))
    d = p.mapping("data_parallel", data.get("data_parallel", {}), dp_fields)
    dpk: dict[str, Any] = {}
    if "replicate" in d:
        dpk["replicate"] = p.choice("data_parallel.replicate", d["replicate"], REPLICATE)
    if "communicator" in d:
        dpk["communicator"] = p.choice("data_parallel.communicator", d["communicator"], COMMUNICATORS)
    for k in ("topology", "algorithm"):
        if k in d:
            dpk[k] = p.string(f"data_parallel.{k}", d[k])
    if "bucket_mb" in d:
        v = d["bucket_mb"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise p.fail("data_parallel.bucket_mb", f"must be a number > 0, got {v!r}")
        dpk["bucket_mb"] = float(v)
    if "shard_modules" in d:
        dpk["shard_modules"] = p.strings("data_parallel.shard_modules", d["shard_modules"])
    if "reshard_after_forward" in d:
        dpk["reshard_after_forward"] = p.boolean("data_parallel.reshard_after_forward",
                                                 d["reshard_after_forward"])
    dp = DataParallel(**dpk)

    rules_data = data.get("tensor_parallel", [])
    if not isinstance(rules_data, list):
        raise p.fail("tensor_parallel", f"must be a list of rules, got {rules_data!r}")
    rules = tuple(_rule(p, f"tensor_parallel[{i}]", r) for i, r in enumerate(rules_data))

    pipe = None
    if data.get("pipeline") is not None:
        pipe = _pipeline(p, data["pipeline"])
    ac = p.strings("activation_checkpoint", data.get("activation_checkpoint", []))
    mp = None
    if data.get("mixed_precision") is not None:
        md = p.mapping("mixed_precision", data["mixed_precision"], ("param_dtype", "reduce_dtype"))
        mp = MixedPrecision(**{k: p.choice(f"mixed_precision.{k}", v, DTYPES) for k, v in md.items()})
    placement = p.strings("placement", data.get("placement", []))
    plan = Plan(mesh=mesh, data_parallel=dp, tensor_parallel=rules, pipeline=pipe,
                activation_checkpoint=ac, mixed_precision=mp, name=name, placement=placement)
    validate(plan, source)
    return plan


def _rule(p: _Parser, where: str, r: Any) -> TPRule:
    r = p.mapping(where, r, tuple(f.name for f in fields(TPRule)))
    if "module" not in r:
        raise p.fail(where, "missing field 'module' (a module-name pattern)")
    kw: dict[str, Any] = {"module": p.string(f"{where}.module", r["module"])}
    if r.get("style") is not None:
        kw["style"] = p.choice(f"{where}.style", r["style"], STYLES)
    if "divide" in r:
        kw["divide"] = p.strings(f"{where}.divide", r["divide"])
    if "style" not in kw and not kw.get("divide"):
        raise p.fail(where, f"rule for {kw['module']!r} needs a 'style' ({', '.join(STYLES)}) "
                     "or 'divide' (attributes split by the tp degree, e.g. [n_head])")
    for k in ("input_layouts", "output_layouts", "desired_input_layouts"):
        if r.get(k) is not None:
            kw[k] = p.layouts(f"{where}.{k}", r[k])
    if r.get("use_local_output") is not None:
        kw["use_local_output"] = p.boolean(f"{where}.use_local_output", r["use_local_output"])
    if r.get("sequence_dim") is not None:
        v = r["sequence_dim"]
        if not isinstance(v, int) or isinstance(v, bool):
            raise p.fail(f"{where}.sequence_dim", f"must be an integer, got {v!r}")
        kw["sequence_dim"] = v
    return TPRule(**kw)


def _pipeline(p: _Parser, data: Any) -> Pipeline:
    d = p.mapping("pipeline", data, tuple(f.name for f in fields(Pipeline)))
    kw: dict[str, Any] = {}
    if "split" in d:
        kw["split"] = "planner" if d["split"] == "planner" else p.strings("pipeline.split", d["split"])
    if "schedule" in d:
        s = d["schedule"]
        if isinstance(s, str) and s.lower().startswith("torch:"):
            names = {n.lower(): n for n in TORCH_SCHEDULES}
            if s[6:].lower() not in names:
                raise p.fail("pipeline.schedule", f"unknown torch.distributed.pipelining schedule "
                             f"{s!r}; one of {['torch:' + n for n in TORCH_SCHEDULES]}")
            s = "torch:" + names[s[6:].lower()]
        else:
            p.choice("pipeline.schedule", s,
                     WEFT_SCHEDULES + tuple("torch:" + n for n in TORCH_SCHEDULES))
        kw["schedule"] = s
    for k in ("microbatches", "stages_per_rank"):
        if k in d:
            kw[k] = p.integer(f"pipeline.{k}", d[k], 1)
    return Pipeline(**kw)


def to_dict(plan: Plan) -> dict:
    """Plain data (what `save` writes); `from_dict(to_dict(p)) == p`."""
    out: dict[str, Any] = {"format": plan.format}
    if plan.name:
        out["name"] = plan.name
    out["mesh"] = plan.mesh.degrees()
    dp = {f.name: getattr(plan.data_parallel, f.name) for f in fields(DataParallel)}
    dp["shard_modules"] = list(dp["shard_modules"])
    if dp["reshard_after_forward"] is None:  # unset: torch's default (units yes, root no)
        del dp["reshard_after_forward"]
    out["data_parallel"] = dp
    rules = []
    for r in plan.tensor_parallel:
        d: dict[str, Any] = {"module": r.module}
        if r.style is not None:
            d["style"] = r.style
        if r.divide:
            d["divide"] = list(r.divide)
        for k in ("input_layouts", "output_layouts", "desired_input_layouts"):
            v = getattr(r, k)
            if v is not None:
                d[k] = list(v)
        for k in ("use_local_output", "sequence_dim"):
            if getattr(r, k) is not None:
                d[k] = getattr(r, k)
        rules.append(d)
    out["tensor_parallel"] = rules
    if plan.pipeline is not None:
        pp = plan.pipeline
        out["pipeline"] = {"split": pp.split if isinstance(pp.split, str) else list(pp.split),
                           "schedule": pp.schedule, "microbatches": pp.microbatches,
                           "stages_per_rank": pp.stages_per_rank}
    out["activation_checkpoint"] = list(plan.activation_checkpoint)
    if plan.mixed_precision is not None:
        out["mixed_precision"] = {"param_dtype": plan.mixed_precision.param_dtype,
                                  "reduce_dtype": plan.mixed_precision.reduce_dtype}
    if plan.placement:
        out["placement"] = list(plan.placement)
    return out
