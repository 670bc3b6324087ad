"""The pp dim with torch.distributed.pipelining: split by module name, one stage per rank.

`pipeline()` traces the unmodified model on one micro-batch (cut from `example_input`,
a global batch: global / (dp x micro-batches) samples) with
torch.export and cuts it before each module named in `pipeline.split`
(SplitPoint.BEGINNING); the stage modules keep the model's parameter names, so
checkpoints still move between plans. Each rank builds the stage of its pp coordinate
(its pp group: the ranks that differ only in pp), then data parallelism wraps that
stage: fully_shard (dp_shard, HSDP) or weft's DataParallel (dp_replicate). Training
runs through the torch schedule: `loss = model.step(x, y, loss_fn)`; gradients are
the mean over micro-batches (scale_grads), as one process on the whole batch gets.

Limits (checked before any traffic, as PlanErrors): one stage per rank (schedules
gpipe/1f1b, torch:GPipe/torch:1F1B); no 'pipedream' (weight stashing is weft's own
runtime); no tensor parallelism with pp (the traced stage has the head count baked
in); no torch DDP (its forward would have to wrap the stage); the micro-batch shape is
the traced one (torch.export specialises shapes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from weft.errors import PlanError
from weft.plan.format import Plan

_WEFT_NAMES = {"gpipe": "GPipe", "1f1b": "1F1B"}


def schedule_class(plan: Plan):
    """The torch schedule class for the plan's pipeline.schedule, or a PlanError."""
    from torch.distributed.pipelining.schedules import get_schedule_class

    name = plan.pipeline.schedule
    torch_name = name[len("torch:"):] if name.startswith("torch:") else _WEFT_NAMES.get(name)
    if torch_name not in ("GPipe", "1F1B"):
        raise PlanError(f"pipeline.schedule: {name!r} is not run by weft.parallelize yet (one "
                        "stage per rank: gpipe, 1f1b, torch:GPipe, torch:1F1B)")
    return get_schedule_class(torch_name)


def check_pipeline(plan: Plan, example_input) -> None:
    """What this runner cannot do, as errors naming the field (no traffic)."""
    pipe, m = plan.pipeline, plan.mesh
    if pipe.split == "planner":
        raise PlanError("pipeline.split: 'planner' is not run by weft.parallelize yet; name the "
                        "modules that start stages 1.. (e.g. [blocks.2])")
    schedule_class(plan)
    if m.tp > 1:
        raise PlanError(f"mesh.tp: {m.tp} with mesh.pp={m.pp} is not supported yet (the traced "
                        "stages cannot be tensor-parallelized); use tp: 1")
    if plan.data_parallel.flavour(m) == "ddp" and m.dp_replicate > 1:
        raise PlanError("data_parallel.replicate: 'ddp' with mesh.pp > 1 is not supported; use "
                        "'weft' or 'fsdp'")
    if plan.activation_checkpoint:
        raise PlanError("activation_checkpoint: not applied to traced pipeline stages yet; "
                        "leave it empty with mesh.pp > 1")
    if example_input is None:
        raise PlanError(f"pipeline: mesh.pp={m.pp} needs weft.parallelize(..., example_input=) "
                        "with a global batch of inputs (the stages are traced on one micro-batch)")
    for t in _tuple(example_input):
        n, per = t.shape[0], m.dp * pipe.microbatches
        if n % per:
            raise PlanError(f"pipeline.microbatches: a global batch of {n} does not split into "
                            f"{m.dp} replicas x {pipe.microbatches} micro-batches")


def _tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def micro_batch(plan: Plan, example_input) -> tuple:
    """One micro-batch cut from a global batch (the shape every step must give)."""
    per = plan.mesh.dp * plan.pipeline.microbatches
    return tuple(t[:t.shape[0] // per] for t in _tuple(example_input))


class PipelineRunner:
    """This rank's stage of the pipeline and the schedule that drives it."""

    def __init__(self, model: nn.Module, plan: Plan, mesh, device: torch.device, example_input):
        from torch.distributed.pipelining import SplitPoint, pipeline

        self.plan, self.device = plan, device
        self.group = mesh["pp"].get_group()
        self.stage_index = dist.get_rank(self.group)
        self.n_stages = plan.mesh.pp
        example = tuple(t.to(device) for t in micro_batch(plan, example_input))
        self.example_shapes = [tuple(t.shape) for t in example]
        split = {name: SplitPoint.BEGINNING for name in plan.pipeline.split}
        self.pipe = pipeline(model, mb_args=example, split_spec=split)
        if self.pipe.num_stages != self.n_stages:
            raise PlanError(f"pipeline.split: {list(plan.pipeline.split)} gave "
                            f"{self.pipe.num_stages} stages when traced, not mesh.pp="
                            f"{self.n_stages} (a split point inside a loop body or unused?)")
        self.module = self.pipe.get_stage_module(self.stage_index)
        self.stage = None
        self._schedules: dict[int, object] = {}

    def build(self) -> None:
        """Create the PipelineStage (after data parallelism has wrapped self.module in place)."""
        self.stage = self.pipe.build_stage(self.stage_index, self.device, group=self.group)

    @property
    def first(self) -> bool:
        return self.stage_index == 0

    @property
    def last(self) -> bool:
        return self.stage_index == self.n_stages - 1

    def step(self, inputs, target, loss_fn) -> torch.Tensor | None:
        """One training step on this rank's batch. Returns the mean micro-batch loss on the
        last stage's ranks and None on the others (sending it back would make the first
        stage wait for the last one every step)."""
        key = id(loss_fn)
        if key not in self._schedules:
            cls = schedule_class(self.plan)
            self._schedules = {key: cls(self.stage, n_microbatches=self.plan.pipeline.microbatches,
                                        loss_fn=loss_fn)}
        sched = self._schedules[key]
        inputs = _tuple(inputs)
        m = self.plan.pipeline.microbatches
        shapes = [(t.shape[0] // m, *t.shape[1:]) if t.shape[0] % m == 0 else None for t in inputs]
        if shapes != self.example_shapes:
            raise PlanError(f"pipeline.microbatches: a batch of {[tuple(t.shape) for t in inputs]} "
                            f"in {m} micro-batches does not give the traced micro-batch "
                            f"{self.example_shapes}")
        losses: list[torch.Tensor] = []
        if self.first and self.last:
            sched.step(*[t.to(self.device) for t in inputs], target=target.to(self.device),
                       losses=losses)
        elif self.first:
            sched.step(*[t.to(self.device) for t in inputs])
        elif self.last:
            sched.step(target=target.to(self.device), losses=losses)
        else:
            sched.step()
        return torch.stack([x.detach().float() for x in losses]).mean() if self.last else None

    def gather_full_state(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every stage's whole parameters, merged on every rank (model order is not kept)."""
        parts: list = [None] * self.n_stages
        dist.all_gather_object(parts, local, group=self.group)
        merged: dict[str, torch.Tensor] = {}
        for p in parts:
            merged.update(p)
        return merged
