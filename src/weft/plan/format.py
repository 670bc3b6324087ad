"""The plan format (``format: weft.plan/1``): dataclasses, parsing and model-free validation.

A plan says how one unmodified model is distributed; the model and the training
loop do not change when the plan does::

    format: weft.plan/1
    name: gpt-dp2-tp2
    mesh: {pp: 1, dp_replicate: -1, dp_shard: 1, tp: 2}   # -1: inferred from the world size
    data_parallel:
      replicate: weft          # auto | weft | ddp | fsdp   (how dp_replicate averages)
      communicator: torch      # torch | weft (topology-aware schedules, weft replicate only)
      topology: auto           # for communicator weft: a builder spec or a YAML file
      shard_modules: ["blocks.*"]   # fully_shard units (dp_shard > 1 or replicate fsdp)
    tensor_parallel:           # rules by module-name pattern, applied on the tp dim
      - {module: "blocks.*.attn.[qkv]", style: colwise}
      - {module: "blocks.*.attn.proj", style: rowwise}
      - {module: "blocks.*.attn", divide: [n_head]}     # heads split: n_head / tp per rank
    pipeline: {split: [blocks.1], schedule: 1f1b, microbatches: 4}
    activation_checkpoint: ["blocks.*"]
    mixed_precision: {param_dtype: bfloat16, reduce_dtype: float32}

Mesh dims, outermost first: pp, dp_replicate, dp_shard, tp (tp varies fastest, so
a tp group is made of neighbouring ranks). Module patterns are matched per dotted
atom with fnmatch (``*`` never crosses a dot; a ``**`` atom matches any depth).
Every error names the field and the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from weft.errors import PlanError

FORMAT = "weft.plan/1"
DIMS = ("pp", "dp_replicate", "dp_shard", "tp")
REPLICATE = ("auto", "weft", "ddp", "fsdp")
COMMUNICATORS = ("torch", "weft")
STYLES = ("colwise", "rowwise", "sequence_parallel", "replicate", "prepare_input")
DTYPES = ("float32", "bfloat16", "float16")
WEFT_SCHEDULES = ("gpipe", "1f1b", "interleaved", "pipedream")
# torch.distributed.pipelining.schedules.get_schedule_class names (torch 2.13), as "torch:<name>".
TORCH_SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble",
                   "ZBVZeroBubble", "DualPipeV")
MULTI_STAGE = ("interleaved", "torch:Interleaved1F1B", "torch:LoopedBFS",
               "torch:InterleavedZeroBubble", "torch:ZBVZeroBubble", "torch:DualPipeV")
_LAYOUT = re.compile(r"^(replicate|shard\((-?\d+)\))$")


@dataclass(frozen=True)
class Mesh:
    """Degrees of the named mesh dims; at most one may be -1 (inferred from the world size)."""

    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1

    def degrees(self) -> dict[str, int]:
        return {d: getattr(self, d) for d in DIMS}

    @property
    def resolved(self) -> bool:
        return -1 not in self.degrees().values()

    @property
    def size(self) -> int:
        if not self.resolved:
            raise PlanError(f"mesh {self.degrees()} has an inferred (-1) degree; resolve it first")
        n = 1
        for v in self.degrees().values():
            n *= v
        return n

    @property
    def dp(self) -> int:
        """Data-parallel degree (replicas of the batch): dp_replicate x dp_shard."""
        return self.dp_replicate * self.dp_shard

    def resolve(self, world: int) -> Mesh:
        """Fill the -1 degree from `world`; check the degrees multiply to `world`."""
        deg = self.degrees()
        known = 1
        for v in deg.values():
            known *= v if v != -1 else 1
        text = " x ".join(f"{d}={v}" for d, v in deg.items())
        if -1 in deg.values():
            dim = next(d for d, v in deg.items() if v == -1)
            if world % known:
                raise PlanError(f"mesh.{dim}: -1 cannot be inferred: {text} does not divide the "
                                f"world size {world}")
            return replace(self, **{dim: world // known})
        if known != world:
            raise PlanError(f"mesh: {text} = {known} ranks, but the world has {world}")
        return self


@dataclass(frozen=True)
class DataParallel:
    """How the dp dims average (dp_replicate) and shard (dp_shard: always fully_shard)."""

    replicate: str = "auto"      # auto: fsdp (HSDP) when dp_shard > 1, else weft
    communicator: str = "torch"  # for replicate weft: TorchCommunicator or WeftCommunicator
    topology: str = "auto"       # WeftCommunicator's topology (builder spec or YAML path)
    algorithm: str = "auto"      # WeftCommunicator's algorithm
    bucket_mb: float = 25.0      # weft DataParallel / DDP bucket size
    shard_modules: tuple[str, ...] = ()  # fully_shard units besides the root
    reshard_after_forward: bool = True

    def flavour(self, mesh: Mesh) -> str:
        """The replicate flavour after 'auto' is resolved."""
        if self.replicate != "auto":
            return self.replicate
        return "fsdp" if mesh.dp_shard > 1 else "weft"


@dataclass(frozen=True)
class TPRule:
    """A tensor-parallel rule: a ParallelStyle and/or attributes divided by the tp degree."""

    module: str
    style: str | None = None
    divide: tuple[str, ...] = ()
    input_layouts: tuple[str, ...] | None = None
    output_layouts: tuple[str, ...] | None = None
    desired_input_layouts: tuple[str, ...] | None = None
    use_local_output: bool | None = None
    sequence_dim: int | None = None


@dataclass(frozen=True)
class Pipeline:
    """Pipeline parallelism over the pp dim (parsed and validated; run in phase 2)."""

    split: tuple[str, ...] | str = "planner"  # module names starting stages 1.., or "planner"
    schedule: str = "1f1b"
    microbatches: int = 1
    stages_per_rank: int = 1


@dataclass(frozen=True)
class MixedPrecision:
    param_dtype: str = "float32"
    reduce_dtype: str = "float32"


@dataclass(frozen=True)
class Plan:
    mesh: Mesh = field(default_factory=Mesh)
    data_parallel: DataParallel = field(default_factory=DataParallel)
    tensor_parallel: tuple[TPRule, ...] = ()
    pipeline: Pipeline | None = None
    activation_checkpoint: tuple[str, ...] = ()
    mixed_precision: MixedPrecision | None = None
    name: str = ""
    format: str = FORMAT

    def resolve(self, world: int) -> Plan:
        """This plan with the -1 mesh degree filled from `world`, validated again."""
        plan = replace(self, mesh=self.mesh.resolve(world))
        validate(plan, self.name or "<plan>")
        return plan


# -- parsing ---------------------------------------------------------------------------------

class _Parser:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, msg: str) -> PlanError:
        return PlanError(f"{self.source}: {where}: {msg}")

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
            if not _LAYOUT.match(s):
                raise self.fail(f"{where}[{i}]" if len(out) > 1 else where,
                                f"unknown layout {s!r}; use 'replicate' or 'shard(<dim>)'")
        return out


def from_dict(data: Any, source: str = "<plan>") -> Plan:
    """Build and validate a Plan from plain data; errors name `source`, the field and the value."""
    p = _Parser(source)
    top = ("format", "name", "mesh", "data_parallel", "tensor_parallel", "pipeline",
           "activation_checkpoint", "mixed_precision")
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
    plan = Plan(mesh=mesh, data_parallel=dp, tensor_parallel=rules, pipeline=pipe,
                activation_checkpoint=ac, mixed_precision=mp, name=name)
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


def validate(plan: Plan, source: str = "<plan>") -> None:
    """Checks across fields that need no model (the model-aware ones are in weft.plan.check)."""
    p = _Parser(source)
    mesh, dp = plan.mesh, plan.data_parallel
    flavour = dp.flavour(mesh)
    if mesh.dp_shard not in (1, -1) and dp.replicate in ("weft", "ddp"):
        raise p.fail("data_parallel.replicate",
                     f"{dp.replicate!r} cannot combine with mesh.dp_shard={mesh.dp_shard} "
                     "(fully_shard); use 'fsdp' (HSDP) or 'auto'")
    if flavour == "ddp" and mesh.tp != 1:
        raise p.fail("data_parallel.replicate",
                     f"'ddp' cannot replicate tensor-parallel (DTensor) parameters (mesh.tp="
                     f"{mesh.tp}): torch 2.13's DDP has no sharding rule for its broadcast; "
                     "use 'weft' or 'fsdp'")
    if dp.communicator == "weft" and flavour != "weft":
        raise p.fail("data_parallel.communicator",
                     f"'weft' needs data_parallel.replicate 'weft', not {flavour!r}")
    if mesh.tp not in (1, -1) and not any(r.style for r in plan.tensor_parallel):
        raise p.fail("mesh.tp", f"{mesh.tp} but tensor_parallel has no rule with a style")
    for i, r in enumerate(plan.tensor_parallel):
        where = f"tensor_parallel[{i}]"
        single = r.style in ("colwise", "rowwise")
        for k in ("input_layouts", "output_layouts"):
            v = getattr(r, k)
            if v is not None and single and len(v) != 1:
                raise p.fail(f"{where}.{k}", f"{r.style} takes one layout, got {list(v)}")
        allowed = {"colwise": {"input_layouts", "output_layouts", "use_local_output"},
                   "rowwise": {"input_layouts", "output_layouts", "use_local_output"},
                   "sequence_parallel": {"sequence_dim", "use_local_output"},
                   "replicate": {"use_local_output"},
                   "prepare_input": {"input_layouts", "desired_input_layouts", "use_local_output"},
                   None: set()}[r.style]
        for k in ("input_layouts", "output_layouts", "desired_input_layouts", "use_local_output",
                  "sequence_dim"):
            if getattr(r, k) is not None and k not in allowed:
                raise p.fail(f"{where}.{k}", f"not an option of style {r.style!r} "
                             f"(options: {sorted(allowed) or 'none'})")
        if r.style == "prepare_input":
            if r.input_layouts is None or r.desired_input_layouts is None:
                raise p.fail(where, "style 'prepare_input' needs input_layouts and "
                             "desired_input_layouts")
            if len(r.input_layouts) != len(r.desired_input_layouts):
                raise p.fail(f"{where}.desired_input_layouts",
                             f"{len(r.desired_input_layouts)} layouts for "
                             f"{len(r.input_layouts)} input_layouts")
    pipe = plan.pipeline
    if mesh.pp not in (1, -1) and pipe is None:
        raise p.fail("mesh.pp", f"{mesh.pp} needs a 'pipeline' section (split, schedule, "
                     "microbatches)")
    if pipe is not None:
        multi = pipe.schedule in MULTI_STAGE
        if multi and pipe.stages_per_rank < 2:
            raise p.fail("pipeline.stages_per_rank", f"schedule {pipe.schedule!r} runs several "
                         f"stages per rank; got {pipe.stages_per_rank}")
        if not multi and pipe.stages_per_rank != 1:
            raise p.fail("pipeline.stages_per_rank", f"schedule {pipe.schedule!r} runs one stage "
                         f"per rank; got {pipe.stages_per_rank}")
        if pipe.schedule in ("torch:ZBVZeroBubble", "torch:DualPipeV") and pipe.stages_per_rank != 2:
            raise p.fail("pipeline.stages_per_rank", f"{pipe.schedule} needs exactly 2 (V shape), "
                         f"got {pipe.stages_per_rank}")
        if mesh.pp != -1 and pipe.split != "planner":
            want = mesh.pp * pipe.stages_per_rank - 1
            if len(pipe.split) != want:
                raise p.fail("pipeline.split", f"{list(pipe.split)} gives {len(pipe.split) + 1} "
                             f"stages; mesh.pp={mesh.pp} x stages_per_rank="
                             f"{pipe.stages_per_rank} needs {want} split points")
            if len(set(pipe.split)) != len(pipe.split):
                raise p.fail("pipeline.split", f"{list(pipe.split)} names a module twice")
        if pipe.schedule == "interleaved" and mesh.pp not in (-1,) and pipe.microbatches % mesh.pp:
            raise p.fail("pipeline.microbatches", f"interleaved 1F1B needs micro-batches divisible "
                         f"by mesh.pp={mesh.pp}, got {pipe.microbatches}")


def to_dict(plan: Plan) -> dict:
    """Plain data (what `save` writes); `from_dict(to_dict(p)) == p`."""
    out: dict[str, Any] = {"format": plan.format}
    if plan.name:
        out["name"] = plan.name
    out["mesh"] = plan.mesh.degrees()
    dp = {f.name: getattr(plan.data_parallel, f.name) for f in fields(DataParallel)}
    dp["shard_modules"] = list(dp["shard_modules"])
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
    return out
