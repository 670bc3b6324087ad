"""The pp dim with torch.distributed.pipelining: stages cut at module names, the model's own
submodules inside them (weft.parallel.split), run by torch's PipelineStage and schedules.

The model is cut before each module named in `pipeline.split` into
mesh.pp x stages_per_rank stages; stage s runs on pp coordinate s % pp (a V for the
ZBVZeroBubble and DualPipeV schedules: weft.plan.describe.stage_rank). Because a stage
holds the model's own blocks (nothing is traced into), tensor parallelism
(parallelize_module), activation checkpointing and data parallelism (fully_shard, HSDP, or
weft's DataParallel over dp_replicate) apply inside each stage as in the whole model.
Training runs through the torch schedule: `loss = model.step(x, y, loss_fn)`; gradients are
the mean over micro-batches (scale_grads), as one process on the whole batch gets. Stage
input shapes are inferred on the first step (torch's dynamic metadata inference); every
later step must give the same micro-batch shape.

Schedules: gpipe, 1f1b, interleaved (torch's Interleaved1F1B) and every torch:<name> that
torch.distributed.pipelining has. Limits (checked before any traffic, as PlanErrors):
'pipedream' (weight stashing) is weft's own runtime only; split 'planner' is not run here;
no torch DDP (its forward would have to wrap the stage); mixed precision only through
fully_shard; zero-bubble schedules (which split backward into input and weight parts) not
with data parallelism over the stage.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from weft.errors import PlanError
from weft.plan.describe import stage_rank
from weft.plan.format import Plan

_WEFT_NAMES = {"gpipe": "GPipe", "1f1b": "1F1B", "interleaved": "Interleaved1F1B"}
ZERO_BUBBLE = ("InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV")


def torch_schedule_name(plan: Plan) -> str:
    name = plan.pipeline.schedule
    if name.startswith("torch:"):
        return name[len("torch:"):]
    if name not in _WEFT_NAMES:
        raise PlanError(f"pipeline.schedule: {name!r} is not run by weft.parallelize (it needs "
                        "weft's own pipeline runtime: `weft plan pipeline` and `weft train --plan "
                        "<pipeline plan>`); use gpipe, 1f1b, interleaved or a torch:<name> schedule")
    return _WEFT_NAMES[name]


def schedule_class(plan: Plan):
    """The torch schedule class for the plan's pipeline.schedule, or a PlanError."""
    from torch.distributed.pipelining.schedules import get_schedule_class

    return get_schedule_class(torch_schedule_name(plan))


def check_pipeline(plan: Plan, example_input=None) -> None:
    """What this runner cannot do, as errors naming the field (no traffic)."""
    pipe, m = plan.pipeline, plan.mesh
    if pipe.split == "planner":
        raise PlanError("pipeline.split: 'planner' is not run by weft.parallelize yet; name the "
                        "modules that start stages 1.. (e.g. [blocks.2])")
    name = torch_schedule_name(plan)
    fsdp = m.dp_shard > 1 or (plan.data_parallel.flavour(m) == "fsdp" and m.dp > 1)
    if plan.data_parallel.flavour(m) == "ddp" and m.dp_replicate > 1:
        raise PlanError("data_parallel.replicate: 'ddp' with mesh.pp > 1 is not supported; use "
                        "'weft' or 'fsdp'")
    if name in ZERO_BUBBLE and m.dp > 1:
        raise PlanError(f"pipeline.schedule: {pipe.schedule!r} splits backward into input and "
                        f"weight parts, which data parallelism over the stage (mesh.dp_replicate x "
                        f"dp_shard = {m.dp}) does not follow; use it with dp 1, or 1f1b/interleaved")
    mp = plan.mixed_precision
    if mp is not None and mp.param_dtype != "float32" and not fsdp:
        raise PlanError("mixed_precision: with mesh.pp > 1 it is applied through fully_shard only "
                        "(mesh.dp_shard > 1 or data_parallel.replicate 'fsdp')")
    if example_input is not None:
        for t in _tuple(example_input):
            n, per = t.shape[0], m.dp * pipe.microbatches
            if n % per:
                raise PlanError(f"pipeline.microbatches: a global batch of {n} does not split "
                                f"into {m.dp} replicas x {pipe.microbatches} micro-batches")


def micro_batch(example, parts: int):
    """The first of `parts` equal pieces of a batch of inputs (a tensor or a tuple of them)."""
    got = tuple(t[: t.shape[0] // parts] for t in _tuple(example))
    return got if isinstance(example, tuple) else got[0]


def _tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def stage_indices(plan: Plan, pp_rank: int) -> list[int]:
    """The stages pp coordinate `pp_rank` runs, in order."""
    pipe = plan.pipeline
    n = plan.mesh.pp * pipe.stages_per_rank
    return [s for s in range(n) if stage_rank(s, plan.mesh.pp, pipe.schedule) == pp_rank]


class PipelineRunner:
    """This rank's stages of the pipeline and the schedule that drives them."""

    def __init__(self, stages: list[nn.Module], plan: Plan, mesh, device: torch.device):
        self.plan, self.device, self.mesh = plan, device, mesh
        self.group = mesh["pp"].get_group()
        self.n_stages = len(stages)
        self.indices = stage_indices(plan, dist.get_rank(self.group))
        self.modules = [stages[s].to(device) for s in self.indices]
        # how a structured output is rebuilt for the loss (not the stage: a rank keeps
        # only its own stages' modules, and so their parameters, alive)
        self.output_spec = getattr(stages[-1], "output_spec", None)
        self.stages: list = []
        self._schedules: dict[int, object] = {}
        self._shapes = None

    def build(self) -> None:
        """Create the PipelineStages (after TP and data parallelism changed self.modules)."""
        from torch.distributed.pipelining import PipelineStage

        def get_mesh(dim_names, layout):  # for DTensor activations between stages (SP)
            return self.mesh[tuple(dim_names)] if len(dim_names) > 1 else self.mesh[dim_names[0]]

        self.stages = [PipelineStage(mod, s, self.n_stages, self.device, group=self.group,
                                     get_mesh=get_mesh)
                       for s, mod in zip(self.indices, self.modules)]

    @property
    def first(self) -> bool:
        return 0 in self.indices

    @property
    def last(self) -> bool:
        return self.n_stages - 1 in self.indices

    def _schedule(self, loss_fn):
        key = id(loss_fn)
        if key not in self._schedules:
            cls = schedule_class(self.plan)
            stages = self.stages if self.plan.pipeline.stages_per_rank > 1 else self.stages[0]
            self._schedules = {key: cls(stages, n_microbatches=self.plan.pipeline.microbatches,
                                        loss_fn=self._structured(loss_fn))}
        return self._schedules[key]

    def _structured(self, loss_fn):
        """`loss_fn` on the model's own output: the last stage sends the tensors of a
        structured one (a ModelOutput captured by torch.export), rebuilt here."""
        from weft.parallel.split import rebuild_output

        spec = self.output_spec
        if spec is None:
            return loss_fn
        return lambda out, target: loss_fn(rebuild_output(spec, out), target)

    def step(self, inputs, target, loss_fn) -> torch.Tensor | None:
        """One training step on this rank's batch. Returns the mean micro-batch loss on the
        last stage's ranks and None on the others (sending it back would make the first
        stage wait for the last one every step)."""
        sched = self._schedule(loss_fn)
        inputs = _tuple(inputs)
        m = self.plan.pipeline.microbatches
        shapes = [(t.shape[0] // m, *t.shape[1:]) if t.shape[0] % m == 0 else None for t in inputs]
        if None in shapes or (self._shapes is not None and shapes != self._shapes):
            raise PlanError(f"pipeline.microbatches: a batch of {[tuple(t.shape) for t in inputs]} "
                            f"in {m} micro-batches does not give the micro-batch of the first step "
                            f"{self._shapes}")
        self._shapes = shapes
        losses: list[torch.Tensor] = []
        kw = {}
        if self.last:
            kw = {"target": target.to(self.device), "losses": losses}
        args = [t.to(self.device) for t in inputs] if self.first else []
        sched.step(*args, **kw)
        return torch.stack([x.detach().float() for x in losses]).mean() if self.last else None

    def gather_full_state(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every stage's whole parameters, merged on every rank (model order is not kept)."""
        parts: list = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(parts, local, group=self.group)
        merged: dict[str, torch.Tensor] = {}
        for p in parts:
            merged.update(p)
        return merged
