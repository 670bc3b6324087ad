"""How one worker holds and steps the model in the current world.

* `LocalEngine` (no plan): a full replica per worker; weft's switchable sync strategies
  (S-SGD, SMA, pair averaging) keep replicas equal, on re-planned collectives.
* `PlanEngine` (a weft.plan: DP, FSDP, TP inside a replica): `weft.parallelize` in every
  world. Data-parallel replicas are what resizes: on every membership change the engine
  is rebuilt for the new world (a fresh model from the factory, the plan on the new
  mesh, a fresh optimizer and scheduler) and the full state gathered in the old world is
  loaded into it (torch.distributed.checkpoint's state-dict API reshards it: FSDP
  shards of 2 ranks become shards of 4). Its state is collective: every member calls it.

Both scale each rank's loss so that the gradient the world averages is the exact mean over
the global batch, also when the last batch of an epoch splits unevenly.
"""

from __future__ import annotations

import torch

from weft.adapt.workload import Built, split


def set_lr(opt, sched, lr: float) -> None:
    """Every param group's LR scaled so the first group's is `lr` (and a scheduler's base LRs
    with it, so that the schedule goes on from the new value)."""
    cur = opt.param_groups[0]["lr"]
    ratio = lr / cur if cur else None
    for g in opt.param_groups:
        g["lr"] = g["lr"] * ratio if ratio else lr
        if "initial_lr" in g and ratio:
            g["initial_lr"] *= ratio
    if sched is not None and ratio and hasattr(sched, "base_lrs"):
        sched.base_lrs = [b * ratio for b in sched.base_lrs]


def unaveragable(opt) -> str | None:
    """Why `opt`'s state cannot be averaged across workers (None: it can): averaging takes
    floating tensors; integers and non-floating tensors must already agree; nothing else."""
    for i, st in enumerate(opt.state.values()):
        for k, v in st.items():
            if torch.is_tensor(v) or isinstance(v, (int, float, bool)):
                continue
            return (f"{type(opt).__name__} state {k!r} of parameter {i} is a "
                    f"{type(v).__name__}, which cannot be averaged across workers")
    return None


class _Base:
    sharded = False  # state() is a collective of the whole world

    def __init__(self, built: Built, lr: float | None):
        self.built, self.lr_override = built, lr
        self.model = self.opt = self.sched = None

    def _optimizer(self, params) -> None:
        self.opt = self.built.make_optimizer(params)
        if self.lr_override is not None:
            for g in self.opt.param_groups:
                g["lr"] = self.lr_override
        mk = self.built.make_scheduler
        self.sched = mk(self.opt) if mk is not None else None

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def after_step(self) -> None:
        if self.sched is not None:
            self.sched.step()

    def check_world(self, n: int, what: str | None = None) -> str | None:
        return None

    def local_numel(self) -> int:
        """Parameter elements this worker holds (a shard's under FSDP)."""
        return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel()
                   for p in self.params)


class LocalEngine(_Base):
    """A full replica in every worker."""

    def __init__(self, built: Built, lr: float | None = None):
        super().__init__(built, lr)
        self.model = built.make_model()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self._optimizer(self.params)
        self.dp_rank_size = None  # the trainer's rank and world

    def bind(self, rank: int, world: int) -> None:
        """Nothing to rebuild: the replica is the same in every world."""

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()

    def forward_backward(self, batch, n: int, total: int) -> float:
        """Backward of this rank's mean loss (the strategy weights it by n / total)."""
        inputs, y = split(batch)
        loss = self.built.loss_fn(self.model(*inputs), y)
        loss.backward()
        return float(loss.detach()) * n

    def step(self, strategy, comm, weight, stats, measure):
        out = strategy.apply(self.params, self.opt, comm, weight, stats, measure)
        self.after_step()
        return out

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict() if self.sched is not None else None}

    def load(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        if self.sched is not None and s.get("sched") is not None:
            self.sched.load_state_dict(s["sched"])

    def fqn_state(self, s: dict | None = None) -> tuple[dict, dict | None]:
        """(model, optimizer) state keyed by parameter names (the checkpoint format), cloned;
        the optimizer's is None before its first step (see PlanEngine.state)."""
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                             get_optimizer_state_dict)

        osd = get_optimizer_state_dict(self.model, self.opt) if self.opt.state else None
        return _clone(get_model_state_dict(self.model)), _clone(osd)

    def load_fqn(self, msd: dict, osd: dict | None) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        if osd is None:
            set_model_state_dict(self.model, msd)
        else:
            set_state_dict(self.model, self.opt, model_state_dict=msd, optim_state_dict=osd)

    def digest(self) -> str:
        """A fingerprint of parameters and optimizer state (equal iff bit-identical)."""
        import hashlib

        h = hashlib.sha1()
        for t in list(self.model.state_dict().values()) + [
                v for st in self.opt.state.values() for v in st.values() if torch.is_tensor(v)]:
            h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]


class PlanEngine(_Base):
    """The model under a weft.plan, rebuilt for every world (see the module doc)."""

    sharded = True

    def __init__(self, built: Built, lr: float | None = None, communicator=None):
        super().__init__(built, lr)
        import torch.distributed.fsdp  # noqa: F401 - warm: imported before any resize
        import weft.parallel.apply  # noqa: F401
        from weft.plan.io import resolve

        self.plan = resolve(built.plan)
        self.communicator = communicator
        self.par = None
        self.world = 0
        self.contributes = True

    def check_world(self, n: int, what: str | None = None) -> str | None:
        """Why the plan cannot run on `n` workers (None: it can). Only data-parallel
        replicas resize: the mesh must resolve for `n` and keep the tp and pp degrees it
        has now (a plan that infers tp from the world, `tp: -1`, would change the
        tensor-parallel split of every layer with each resize). `what` names the change
        in the message (default: the Resize action)."""
        from weft.errors import PlanError

        mesh = self.plan.mesh
        where = f"{what or f'Resize(workers={n})'}: plan {self.plan.name!r}"
        try:
            new = mesh.resolve(n)
        except PlanError as exc:
            return f"{where}: {exc}"
        if self.world:
            now = mesh.resolve(self.world)
            for d in ("tp", "pp"):
                if getattr(new, d) != getattr(now, d):
                    return (f"{where} would change mesh.{d} from {getattr(now, d)} to "
                            f"{getattr(new, d)}: only data-parallel replicas resize (give "
                            f"mesh.{d} a fixed degree and dp_replicate or dp_shard -1)")
        return None

    def bind(self, rank: int, world: int, communicator=None) -> None:
        """Build the model under the plan for the current group (a fresh model every time:
        a plan's modules are bound to one mesh)."""
        from weft.parallel.apply import parallelize

        self.model = None
        model = self.built.make_model()
        plan = self.plan
        if plan.mesh.pp > 1:
            raise ValueError(f"plan {plan.name!r}: pipeline plans (mesh.pp > 1) are not "
                             "supported under adaptation")
        self.par = parallelize(model, plan, communicator=communicator or self.communicator)
        self.model = self.par
        self.params = [p for p in self.par.parameters() if p.requires_grad]
        self._optimizer(self.params)
        self.world = world
        self.dp_rank_size = (self.par.dp_rank, self.par.dp_size)
        # the ranks of one replica (tp, pp) read the same batch: one of them counts it
        self.contributes = all(self.par.coords[d] == 0 for d in ("tp", "pp"))

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=False)

    def forward_backward(self, batch, n: int, total: int) -> float:
        """The plan's runtime averages gradients over the dp replicas; scaling this
        replica's mean loss by n * dp / total makes that average the global-batch mean."""
        inputs, y = split(batch)
        loss = self.built.loss_fn(self.par(*inputs), y)
        scale = n * self.par.dp_size / total if n else 0.0
        (loss * scale).backward()
        return float(loss.detach()) * n

    def step(self, strategy, comm, weight, stats, measure):
        buf = stats.clone()
        work = comm.all_reduce(buf, op="sum", async_op=True)  # overlaps the optimizer step
        self.opt.step()
        self.after_step()
        work.wait()
        return buf, None

    def state(self) -> dict:
        """The full (unsharded) state, keyed by parameter names, on every rank (collective).
        An optimizer that has not stepped yet has no state (asking DCP for it would make
        one with a step of zero gradients: Adam would count a step that never was)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True)
        msd = get_model_state_dict(self.par.module, options=opts)
        osd = get_optimizer_state_dict(self.par.module, self.opt, options=opts) \
            if self.opt.state else None
        return {"model": _clone(msd), "opt": _clone(osd),
                "sched": self.sched.state_dict() if self.sched is not None else None}

    def load(self, s: dict) -> None:
        self.load_fqn(s["model"], s["opt"])
        if self.sched is not None and s.get("sched") is not None:
            self.sched.load_state_dict(s["sched"])

    def fqn_state(self, s: dict | None = None) -> tuple[dict, dict]:
        s = s if s is not None else self.state()
        return s["model"], s["opt"]

    def load_fqn(self, msd: dict, osd: dict | None) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_model_state_dict, set_state_dict)

        opts = StateDictOptions(full_state_dict=True)
        if osd is None:  # not stepped yet: the fresh optimizer is the right one
            set_model_state_dict(self.par.module, msd, options=opts)
        else:
            set_state_dict(self.par.module, self.opt, model_state_dict=msd,
                           optim_state_dict=osd, options=opts)

    def digest(self) -> None:
        return None  # shards differ between ranks by design


def _clone(tree):
    """A copy of a state dict's tensors (DTensors made whole), structure kept."""
    if torch.is_tensor(tree):
        t = tree.full_tensor() if hasattr(tree, "full_tensor") else tree
        return t.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_clone(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_clone(v) for v in tree)
    return tree


def make(built: Built, lr: float | None = None):
    return PlanEngine(built, lr) if built.plan is not None else LocalEngine(built, lr)


