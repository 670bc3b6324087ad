"""A plan as the cost model sees it: mesh degrees, batch split, stages over the workload's
layers, checkpointed layers, data-parallel flavour; to and from `weft.plan.Plan`.

    shape = Shape.of(plan, workload, global_batch=64, world=8)   # a weft.plan/1 plan
    plan = shape.to_plan(workload, rules=..., name="auto")        # and back
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from weft.errors import PlanError
from weft.plan.check import match
from weft.plan.format import DataParallel, Mesh, Pipeline, Plan, TPRule
from weft.planner.workload import Workload

FLUSH = ("gpipe", "1f1b", "interleaved")


@dataclass(frozen=True)
class Shape:
    pp: int = 1
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    global_batch: int = 1
    microbatches: int = 1
    schedule: str = "1f1b"  # gpipe | 1f1b | interleaved (flush schedules)
    stages_per_rank: int = 1
    bounds: tuple[tuple[int, int], ...] = ()  # layer ranges of the stages, in stage order
    checkpoint: tuple[int, ...] = ()  # layers recomputed in the backward (activation ckpt)
    flavour: str = "none"  # none | weft | ddp | fsdp  (how dp_replicate averages)
    mixed: bool = False  # bf16 parameters / activations
    optimizer_states: int = 2  # Adam
    bucket_mb: float = 25.0
    communicator: str = "torch"
    # fully_shard units besides each stage's root, as layer groups (`fsdp_unit_layers`);
    # None: every block layer (what `weft plan auto` writes: shard_modules of the blocks)
    fsdp_units: tuple[tuple[int, ...], ...] | None = None
    # data_parallel.reshard_after_forward; None: torch's default (units yes, each root no)
    reshard: bool | None = None

    @property
    def world(self) -> int:
        return self.pp * self.dp_replicate * self.dp_shard * self.tp

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def micro_batch(self) -> float:
        """Samples per micro-batch on one replica."""
        return self.global_batch / (self.dp * self.microbatches)

    @property
    def sharded(self) -> bool:
        """Parameters, gradients and optimizer state split over dp_shard (fully_shard)."""
        return self.dp_shard > 1 or (self.flavour == "fsdp" and self.dp > 1)

    @property
    def stages(self) -> int:
        return self.pp * self.stages_per_rank

    def label(self) -> str:
        parts = [f"pp{self.pp}" if self.pp > 1 else "", f"dp{self.dp_replicate}"
                 if self.dp_replicate > 1 else "", f"fsdp{self.dp_shard}" if self.dp_shard > 1
                 else "", f"tp{self.tp}" if self.tp > 1 else ""]
        s = "x".join(p for p in parts if p) or "single"
        if self.pp > 1:
            s += f" {self.schedule}"
            if self.stages_per_rank > 1:
                s += f"x{self.stages_per_rank}"
        s += f" m{self.microbatches}"
        if self.checkpoint:
            s += " ac"
        return s

    # -- from and to weft.plan -------------------------------------------------------
    @classmethod
    def of(cls, plan: Plan, workload: Workload, global_batch: int,
           world: int | None = None) -> Shape:
        """The shape of a weft.plan/1 `plan` (its -1 degree resolved with `world`)."""
        mesh = plan.mesh.resolve(world) if world is not None else plan.mesh
        if not mesh.resolved:
            raise PlanError("mesh: a degree is -1 (inferred); give the world size")
        pipe = plan.pipeline
        sched, spr, m, bounds = "1f1b", 1, 1, ((0, len(workload)),)
        if pipe is not None and mesh.pp > 1:
            sched = pipe.schedule.replace("torch:", "").lower()
            sched = {"interleaved1f1b": "interleaved"}.get(sched, sched)
            if sched not in FLUSH:
                raise PlanError(f"pipeline.schedule: {pipe.schedule!r} is not modelled by the "
                                f"plan cost model (one of {', '.join(FLUSH)})")
            spr, m = pipe.stages_per_rank, pipe.microbatches
            if pipe.split == "planner":
                bounds = ()
            else:
                bounds = bounds_of(pipe.split, workload)
        elif pipe is not None:
            m = pipe.microbatches
        ac = checkpoint_layers(workload, plan.activation_checkpoint)
        dp = plan.data_parallel
        flavour = dp.flavour(mesh) if mesh.dp > 1 else "none"
        mixed = plan.mixed_precision is not None and plan.mixed_precision.param_dtype != "float32"
        units = fsdp_unit_layers(workload, dp.shard_modules)
        if units == tuple((i,) for i in block_layers(workload)) or not (
                mesh.dp_shard > 1 or (flavour == "fsdp" and mesh.dp > 1)):
            units = None  # the default, or no fully_shard at all
        return cls(mesh.pp, mesh.dp_replicate, mesh.dp_shard, mesh.tp, global_batch, m, sched,
                   spr, bounds, ac, flavour, mixed, bucket_mb=dp.bucket_mb,
                   communicator=dp.communicator,
                   fsdp_units=units,
                   reshard=dp.reshard_after_forward)

    def to_plan(self, workload: Workload, rules: tuple[TPRule, ...] = (), name: str = "auto",
                shard_modules: tuple[str, ...] = (), checkpoint: tuple[str, ...] = ()) -> Plan:
        """A weft.plan/1 plan of this shape (split at the stages' first modules)."""
        mesh = Mesh(self.pp, self.dp_replicate, self.dp_shard, self.tp)
        replicate = {"none": "auto", "fsdp": "fsdp", "weft": "weft", "ddp": "ddp"}[self.flavour]
        dp = DataParallel(replicate=replicate, shard_modules=shard_modules if self.sharded
                          else (), bucket_mb=self.bucket_mb, communicator=self.communicator)
        pipe = None
        if self.pp > 1:
            split = tuple(workload.layers[i].split_at for i, _ in self.bounds[1:])
            sched = "interleaved" if self.schedule == "interleaved" else self.schedule
            pipe = Pipeline(split=split, schedule=sched, microbatches=self.microbatches,
                            stages_per_rank=self.stages_per_rank)
        return Plan(mesh=mesh, data_parallel=dp, tensor_parallel=tuple(rules) if self.tp > 1
                    else (), pipeline=pipe,
                    activation_checkpoint=tuple(checkpoint) if self.checkpoint else (),
                    name=name)

    def with_bounds(self, bounds) -> Shape:
        return replace(self, bounds=tuple((int(i), int(j)) for i, j in bounds))


def bounds_of(split, workload: Workload) -> tuple[tuple[int, int], ...]:
    """Layer ranges of the stages that start at the modules named in `split`."""
    where = {l.split_at: i for i, l in enumerate(workload.layers) if l.split_at}
    starts = [0]
    for k, name in enumerate(split):
        if name not in where:
            raise PlanError(f"pipeline.split[{k}]: {name!r} does not start a layer of the "
                            f"workload (stages may start at: {', '.join(list(where)[:6])}...)")
        starts.append(where[name])
    if starts != sorted(starts) or len(set(starts)) != len(starts):
        raise PlanError(f"pipeline.split: {list(split)} is not in the model's order")
    ends = starts[1:] + [len(workload)]
    return tuple(zip(starts, ends))


def checkpoint_layers(workload: Workload, patterns) -> tuple[int, ...]:
    """Indices of the layers holding a module that an activation_checkpoint pattern names
    (the module or one of its parents)."""
    out = []
    for i, l in enumerate(workload.layers):
        for mod in l.modules:
            atoms = mod.split(".")
            prefixes = [".".join(atoms[:k]) for k in range(1, len(atoms) + 1)]
            if any(match(p, m) for p in patterns for m in prefixes):
                out.append(i)
                break
    return tuple(out)


def block_layers(workload: Workload) -> tuple[int, ...]:
    """The repeated blocks (layers that are one pipeline unit named as their split module)."""
    return tuple(i for i, l in enumerate(workload.layers)
                 if i > 0 and l.split_at == l.name and l.name != workload.layers[-1].name)


def fsdp_unit_layers(workload: Workload, patterns) -> tuple[tuple[int, ...], ...]:
    """The layers of each fully_shard unit besides the roots, as `weft.parallel.fsdp` makes
    them from `data_parallel.shard_modules` patterns: a layer's parameters belong to the
    innermost matched module holding it (a unit may span layers: 'blocks' holds them all).
    A pattern that matches only inside a layer's modules (blocks.*.attn) counts as one unit
    for the layer: the workload knows no deeper names. Layers in no unit are in their
    stage's root unit."""
    units: dict[str, list[int]] = {}
    for i, l in enumerate(workload.layers):
        for mod in l.modules:
            atoms = mod.split(".")
            key = None
            for k in range(len(atoms), 0, -1):
                pre = ".".join(atoms[:k])
                if any(match(p, pre) for p in patterns):
                    key = pre
                    break
            if key is None and any(len(p.split(".")) > len(atoms)
                                   and match(".".join(p.split(".")[:len(atoms)]), mod)
                                   for p in patterns):
                key = mod
            if key is not None and i not in units.setdefault(key, []):
                units[key].append(i)
    return tuple(tuple(v) for v in units.values())


def unit_layers(shape: Shape, workload: Workload) -> tuple[tuple[int, ...], ...]:
    """`shape.fsdp_units`, or (None) every block layer alone."""
    if shape.fsdp_units is not None:
        return shape.fsdp_units
    return tuple((i,) for i in block_layers(workload))
