"""The plan format (``format: weft.plan/1``): dataclasses and model-free validation
(reading and writing plain data: weft.plan.parse; files: weft.plan.io).

A plan says how one unmodified model is distributed; the model and the training
loop do not change when the plan does::

    format: weft.plan/1
    name: gpt-dp2-tp2
    mesh: {pp: 1, dp_replicate: -1, dp_shard: 1, tp: 2}   # -1: inferred from the world size
    data_parallel:
      replicate: weft          # auto | weft | ddp | fsdp   (how dp_replicate averages)
      communicator: torch      # torch | weft (topology-aware schedules, weft replicate only)
      topology: auto           # for communicator weft: a builder spec or a YAML file
                               # (with a placement, ranks sit on their placed devices)
      shard_modules: ["blocks.*"]   # fully_shard units (dp_shard > 1 or replicate fsdp)
    tensor_parallel:           # rules by module-name pattern, applied on the tp dim
      - {module: "blocks.*.attn.[qkv]", style: colwise}
      - {module: "blocks.*.attn.proj", style: rowwise}
      - {module: "blocks.*.attn", divide: [n_head]}     # heads split: n_head / tp per rank
    pipeline: {split: [blocks.1], schedule: 1f1b, microbatches: 4}
    activation_checkpoint: ["blocks.*"]
    mixed_precision: {param_dtype: bfloat16, reduce_dtype: float32}
    placement: [n0.gpu0, n0.gpu1, n1.gpu0, n1.gpu1]   # optional: the device of each rank

Mesh dims, outermost first: pp, dp_replicate, dp_shard, tp (tp varies fastest, so
a tp group is made of neighbouring ranks). `placement` (optional, written by
`weft plan auto`) names the device each mesh rank runs on, in rank order: processes
that name their device ($WEFT_DEVICE) get the mesh rank of it (`weft.parallel.mesh`),
else a launcher starts rank r on placement[r]. Module patterns are matched per dotted
atom with fnmatch (``*`` never crosses a dot; a ``**`` atom matches any depth).
Every error names the field and the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

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
LAYOUT = re.compile(r"^(replicate|shard\((-?\d+)\))$")


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
    # True/False: every fully_shard unit, the root too; None (unset): torch's default, the
    # units reshard and the root keeps its parameters (its backward needs them first)
    reshard_after_forward: bool | None = None

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
    """Pipeline parallelism over the pp dim: stages cut before the named modules (run by
    weft.parallel.pp with torch.distributed.pipelining's schedules)."""

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
    placement: tuple[str, ...] = ()  # device of each mesh rank (optional)

    def resolve(self, world: int, source: str | None = None) -> Plan:
        """This plan with the -1 mesh degree filled from `world`, validated again (errors
        start with `source`, e.g. the plan's file, when given)."""
        try:
            plan = replace(self, mesh=self.mesh.resolve(world))
        except PlanError as exc:
            if source:
                raise PlanError(f"{source}: {exc}") from None
            raise
        validate(plan, source or self.name or "<plan>")
        return plan


class ErrorSource:
    """Makes PlanErrors that start with the plan's source (file name) and the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, msg: str) -> PlanError:
        return PlanError(f"{self.source}: {where}: {msg}")


def validate(plan: Plan, source: str = "<plan>") -> None:
    """Checks across fields that need no model (the model-aware ones are in weft.plan.check)."""
    p = ErrorSource(source)
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
    if plan.placement:
        dup = sorted({d for d in plan.placement if plan.placement.count(d) > 1})
        if dup:
            raise p.fail("placement", f"device(s) {dup} are given to more than one rank")
        if mesh.resolved and len(plan.placement) != mesh.size:
            raise p.fail("placement", f"{len(plan.placement)} devices for a mesh of "
                         f"{mesh.size} ranks")
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
