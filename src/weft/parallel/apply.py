"""`weft.parallelize(model, plan)`: one plan distributes an unmodified module.

    model = weft.parallelize(gpt.model(), "plan.yaml")       # in every rank
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    for x, y in model.loader(train_set, batch_size=64):      # the global batch
        loss = loss_fn(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
    model.save("ckpt", opt, step=100)       # loads under any other plan: model.load("ckpt", opt)

Order (as torchtitan): check the plan against the model and the world (errors name
field and value, before any process-group traffic), build the DeviceMesh, tensor
parallelism (parallelize_module), activation checkpointing, then data parallelism:
fully_shard (dp_shard > 1, or HSDP), weft's DataParallel (any Communicator, e.g.
the topology-aware WeftCommunicator) or torch DDP over dp_replicate. Plans with
mesh.pp > 1 are cut into stages at module names first (weft.parallel.split: the stages
hold the model's own submodules), tensor- and data-parallelized stage by stage, and train
through torch.distributed.pipelining's schedules with `model.step(x, y, loss_fn)`, which
every plan offers (weft.parallel.pp).

What torch 2.13 does on gloo (CPU), tried here: DeviceMesh, parallelize_module
(all styles), fully_shard incl. HSDP and FSDP+TP (gloo has reduce_scatter and
all_gather_into_tensor), DCP save/load resharding between plans all work. torch DDP
cannot take DTensor (tensor-parallel) parameters ("c10d.broadcast_ has no sharding
strategy"), so plans with tp > 1 replicate with weft's DataParallel (it averages
the local shards) or fully_shard; the plan check says so. Mixed precision: with
fully_shard through its MixedPrecisionPolicy; otherwise as autocast around forward
(param_dtype), gradients staying in the parameters' dtype.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.distributed as dist
from torch import nn

from weft.errors import PlanError
from weft.parallel.mesh import (
    build_mesh,
    coordinates,
    device_for_backend,
    device_memory,
    dp_rank_size,
)
from weft.plan.check import check, matching
from weft.plan.format import Plan
from weft.plan.io import resolve


def parallelize(model: nn.Module, plan: Plan | str | os.PathLike | dict, *,
                device: torch.device | str | None = None, memory: float | None = None,
                communicator=None, example_input=None) -> Parallel:
    """Apply `plan` to `model` (changed in place) in every rank; return the module to train.

    `memory`: bytes per device for the memory check (default: the CUDA device's total;
    unknown on CPU). `communicator`: a Communicator for replicate 'weft' instead of the one
    the plan names. `example_input`: optionally a global batch of inputs (only shapes
    matter); plans with mesh.pp > 1 then check that it splits into dp x micro-batches before
    any traffic (such plans train with `model.step`, which every plan offers), and a model
    whose forward torch.fx cannot trace is cut after torch.export captures it on one
    micro-batch of it (`weft.parallel.exported`). It may be a function returning that batch,
    called only then (its split is then not checked here). Works without a process group for a
    one-rank plan.
    """
    plan = resolve(plan)
    world = dist.get_world_size() if dist.is_initialized() else 1
    device = torch.device(device) if device is not None else device_for_backend()
    plan = check(plan, model, world, memory if memory is not None else device_memory(device))
    stages = None
    if plan.mesh.pp > 1:
        from weft.parallel.pp import check_pipeline, micro_batch
        from weft.parallel.split import split_model

        lazy = callable(example_input)  # made only if torch.export needs it
        check_pipeline(plan, None if lazy else example_input)
        micro = None if example_input is None else \
            lambda: micro_batch(example_input() if lazy else example_input,
                                plan.mesh.dp * plan.pipeline.microbatches)
        # before any traffic: errors first (torch.export captures it where fx cannot)
        stages = split_model(model, plan.pipeline.split, micro)
        tied = _check_tied_stages(model, stages, plan)
    model.to(device)
    mesh = build_mesh(plan, device) if world > 1 else None
    if stages is not None:
        return _pipelined(model, tied, stages, plan, mesh, device, communicator)
    if mesh is not None and plan.mesh.tp > 1:
        from weft.parallel.tensor import apply_tensor_parallel
        from weft.parallel.tied import retie, ties

        tied = ties(model)
        apply_tensor_parallel(model, plan, mesh["tp"])
        retie(model, tied)  # the rules gave each use of a tied weight its own tensor
    apply_activation_checkpointing(model, plan.activation_checkpoint)
    runner: nn.Module = model
    flavour = plan.data_parallel.flavour(plan.mesh)
    if mesh is not None and (plan.mesh.dp_shard > 1 or (flavour == "fsdp" and plan.mesh.dp > 1)):
        from weft.parallel.fsdp import apply_fully_shard

        apply_fully_shard(model, plan, mesh)
    elif mesh is not None and plan.mesh.dp_replicate > 1:
        runner = _replicate(model, plan, mesh, device, flavour, communicator)
    return Parallel(model, runner, plan, mesh, device)


def _check_tied_stages(model, stages, plan):
    """(tied weight groups, parameter names per stage, stage -> pp rank), checked."""
    from weft.parallel.tied import check_schedule, ties
    from weft.plan.describe import stage_rank

    groups = ties(model)
    names = [{n for n, _ in st.named_parameters(remove_duplicate=False)} for st in stages]
    rank_of = lambda s: stage_rank(s, plan.mesh.pp, plan.pipeline.schedule)
    check_schedule(plan, groups, names, rank_of)
    return groups, names, rank_of


def _pipelined(model, tied_stages, stages, plan, mesh, device, communicator) -> Parallel:
    """This rank's stages (the model's own submodules): TP, activation checkpointing and
    fully_shard inside each, then weft DataParallel over all of them, then the schedule.
    A weight tied across stages on different ranks is kept equal (weft.parallel.tied)."""
    from weft.parallel.pp import PipelineRunner
    from weft.parallel.split import stage_holder
    from weft.parallel.tied import TiedGrads, retie, stage_names_on

    tied, names, rank_of = tied_stages
    pipe = PipelineRunner(stages, plan, mesh, device)
    flavour = plan.data_parallel.flavour(plan.mesh)
    fsdp = plan.mesh.dp_shard > 1 or (flavour == "fsdp" and plan.mesh.dp > 1)
    if plan.mesh.tp > 1:
        from weft.parallel.tensor import apply_tensor_parallel

        for mod in pipe.modules:
            apply_tensor_parallel(mod, plan, mesh["tp"], strict=False)
        retie(model, tied, stage_names_on(names, rank_of, mesh.get_coordinate()[0]))
    for mod in pipe.modules:
        apply_activation_checkpointing(mod, plan.activation_checkpoint)
        if fsdp:
            from weft.parallel.fsdp import apply_fully_shard

            apply_fully_shard(mod, plan, mesh)
    held = stage_holder(pipe.modules)  # the model's names, after TP/FSDP replaced parameters
    runner = held
    if not fsdp and plan.mesh.dp_replicate > 1:  # gradient hooks on the stages' parameters
        runner = _replicate(held, plan, mesh, device, flavour, communicator)
    pipe.tied = TiedGrads(model, tied, names, rank_of, mesh)  # after the replicas agree
    pipe.build()
    return Parallel(held, runner, plan, mesh, device, pipeline=pipe)


def _replicate(model, plan, mesh, device, flavour, communicator) -> nn.Module:
    dp = plan.data_parallel
    group = mesh["dp_replicate"].get_group()
    if flavour == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, process_group=group, device_ids=ids,
                                                   bucket_cap_mb=dp.bucket_mb)
    from weft.parallel.data import DataParallel

    if communicator is None:
        if dp.communicator == "weft":
            from weft.collectives.weft_comm import WeftCommunicator

            communicator = WeftCommunicator(dp.topology, devices=_group_devices(plan, group),
                                            algorithm=dp.algorithm, group=group)
        else:
            from weft.collectives.communicator import TorchCommunicator

            communicator = TorchCommunicator(group)
    return DataParallel(model, communicator=communicator, bucket_cap_mb=dp.bucket_mb)


def _group_devices(plan, group) -> list[str] | None:
    """The devices of `group`'s ranks under the plan's placement (after `build_mesh` the
    process rank is the mesh rank, which runs on placement[rank]), for a communicator
    whose topology was named: the data-parallel schedules then run over the links between
    the devices the ranks are placed on. None without a placement or with topology "auto"
    (a mesh of the group's own size, which does not know the placement's device names)."""
    if not plan.placement or plan.data_parallel.topology == "auto":
        return None
    return [plan.placement[g] for g in dist.get_process_group_ranks(group)]


def apply_activation_checkpointing(model: nn.Module, patterns) -> list[str]:
    """Recompute each matched module's forward in backward (torch.utils.checkpoint,
    non-reentrant). The module keeps its name, so state dicts do not change."""
    from torch.utils.checkpoint import checkpoint

    modules = dict(model.named_modules())
    names = sorted({n for pat in patterns for n in matching(pat, model)})
    names = [n for n in names if not any(n.startswith(o + ".") for o in names)]  # outermost only
    for n in names:
        mod = modules[n]
        mod.forward = functools.partial(checkpoint, mod.forward, use_reentrant=False)
    return names


class Parallel(nn.Module):
    """The user's module, distributed: call it, train it, save and load it across plans.

    `module` is the user's (parallelized) module, so `parameters()` and state dicts use the
    model's own names (under the `module.` prefix here; `save`/`load` use the model's own).
    """

    def __init__(self, module: nn.Module, runner: nn.Module, plan: Plan, mesh, device,
                 pipeline=None):
        super().__init__()
        self.module = module
        self.pipeline = pipeline  # a PipelineRunner for plans with mesh.pp > 1
        object.__setattr__(self, "runner", runner)  # a DataParallel/DDP wrapper, or module
        self.plan, self.mesh, self.device = plan, mesh, device
        self.coords = coordinates(mesh)
        self.dp_rank, self.dp_size = dp_rank_size(plan, self.coords)
        mp = plan.mixed_precision
        self._autocast = (mp is not None and mp.param_dtype != "float32"
                          and not self.fully_sharded)
        self._accumulating = False  # inside no_sync()

    @property
    def fully_sharded(self) -> bool:
        return hasattr(self.module, "reshard")  # fully_shard's FSDPModule

    def forward(self, *args, **kwargs):
        if self.pipeline is not None:
            raise PlanError(f"mesh.pp: {self.plan.mesh.pp}: a pipelined model runs through its "
                            "schedule; train with model.step(inputs, targets, loss_fn)")
        if self._autocast:
            from weft.parallel.fsdp import dtype

            with torch.autocast(self.device.type, dtype=dtype(self.plan.mixed_precision.param_dtype)):
                return self.runner(*args, **kwargs)
        return self.runner(*args, **kwargs)

    def step(self, inputs, targets, loss_fn) -> torch.Tensor | None:
        """Forward and backward on this rank's batch (moved to the plan's device); returns the
        loss (detached). The same call for every plan: pipelined plans run their schedule
        over the micro-batches and return the loss on the last stage's ranks only (None
        elsewhere). Under pipeline x weft DataParallel the replicas average the gradients
        once, after the schedule's last backward (the micro-batches accumulate locally);
        inside the user's `no_sync()` not at all."""
        if self.pipeline is not None:
            runner = self.runner
            if getattr(runner, "syncing", False):
                with runner.no_sync():  # else each micro-batch's backward would all-reduce
                    loss = self.pipeline.step(inputs, targets, loss_fn)
                runner.sync_gradients()
            else:
                loss = self.pipeline.step(inputs, targets, loss_fn)
            if not self._accumulating:  # a weight tied across stages: sum its copies' grads
                self.pipeline.tied.sync()
            return loss
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        args = tuple(a.to(self.device) if torch.is_tensor(a) else a for a in args)
        loss = loss_fn(self(*args), targets.to(self.device))
        loss.backward()
        return loss.detach()

    def train(self, mode: bool = True):
        super().train(mode)
        self.runner.train(mode)
        return self

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally (no data-parallel communication) inside this block."""
        self._accumulating, before = True, self._accumulating
        try:
            with self._no_sync():
                yield
        finally:
            self._accumulating = before

    @contextlib.contextmanager
    def _no_sync(self):
        if self.fully_sharded:
            self.module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)
        elif hasattr(self.runner, "no_sync"):
            with self.runner.no_sync():
                yield
        else:
            yield

    # -- data -------------------------------------------------------------------------
    def _local_batch(self, batch_size: int) -> int:
        if batch_size % self.dp_size:
            raise PlanError(f"batch_size {batch_size} is not divisible by the data-parallel degree "
                            f"{self.dp_size} (dp_replicate x dp_shard)")
        return batch_size // self.dp_size

    def loader(self, dataset, batch_size: int, shuffle: bool = True, seed: int = 0,
               drop_last: bool = True, **kw) -> torch.utils.data.DataLoader:
        """A DataLoader of this rank's share of each global batch of `batch_size`.

        Replicas split the batch; the tp ranks of one replica get the same samples. Call
        `loader.sampler.set_epoch(e)` for a fresh shuffle each epoch.
        """
        from torch.utils.data import DataLoader, DistributedSampler

        local = self._local_batch(batch_size)
        sampler = DistributedSampler(dataset, num_replicas=self.dp_size, rank=self.dp_rank,
                                     shuffle=shuffle, seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=local, sampler=sampler, drop_last=drop_last, **kw)

    def shard(self, batch):
        """This replica's contiguous slice of a global batch (a tensor, or a tuple/list of them)."""
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.shard(b) for b in batch)
        local = self._local_batch(batch.shape[0])
        return batch[self.dp_rank * local:(self.dp_rank + 1) * local].to(self.device)

    # -- state ------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        from weft.parallel.state import full_state_dict

        state = full_state_dict(self.module)
        return self.pipeline.gather_full_state(state) if self.pipeline is not None else state

    def save(self, path: str | os.PathLike, optimizer: torch.optim.Optimizer | None = None,
             **extra) -> None:
        from weft.parallel.state import save

        save(path, self.module, optimizer, plan=self.plan, optim_names=self._optim_names(),
             **extra)

    def load(self, path: str | os.PathLike, optimizer: torch.optim.Optimizer | None = None) -> dict:
        from weft.parallel.state import load

        return load(path, self.module, optimizer, optim_names=self._optim_names())

    def _optim_names(self) -> dict[str, str]:
        """Names this rank's optimizer state is saved under instead of its own (a weight
        tied across pipeline stages: the model's first name for it)."""
        tied = getattr(self.pipeline, "tied", None)
        return tied.canonical if tied is not None else {}
