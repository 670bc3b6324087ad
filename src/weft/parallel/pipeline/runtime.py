"""The pipeline runtime: one executor for every schedule, over torch.distributed ranks.

    pipe = Pipeline.from_plan(model, plan, F.cross_entropy, schedule="1f1b", microbatches=4)
    loss = pipe.step(x, y)                 # GPipe / 1F1B-flush / interleaved: one optimizer step
    losses = pipe.train_async(xs, ys)      # PipeDream 1F1B + weight stashing over many micro-batches

Every rank builds the same model (same seed) and keeps the chunks its stage
owns. Activations and gradients travel with `isend`/`irecv` (shapes come from
a shape pass on the first micro-batch); a receive is posted one compute action
ahead and waited on by the action that needs it, each wait bounded by its own
``recv_timeout`` (a `TransferTimeout` names the stage, the peer rank, the
micro-batch and the timeout), and so is the final wait for this step's
sends. Replicated stages sum (flush) or average (PipeDream) their
gradients with a `Communicator` all-reduce over the stage's group, and a parameter that
layers of two stages use (a tied embedding) has its gradient summed over every rank holding
a copy (`weft.parallel.pipeline.shared`), so the copies stay bit-identical.

In-place operations are safe anywhere: the shape pass notes which chunks change their input
in place (`layers.mutates_input`'s version-counter test), and those chunks run on a copy of
their input, so autograd's leaf (the received activation) is never modified; the shape pass
itself restores the model's buffers (batch-norm statistics) and the random state.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from weft.collectives.communicator import TorchCommunicator
from weft.errors import PlanError, WeftError
from weft.parallel.pipeline.actions import COMPUTE, Action
from weft.parallel.pipeline.layers import as_sequential, split_bounds
from weft.parallel.pipeline.schedule import build_schedule, validate_schedule
from weft.parallel.pipeline.shared import SharedGrads
from weft.parallel.pipeline.stash import WeightStash
from weft.tensors import flatten, unflatten


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05)


class TransferTimeout(WeftError, RuntimeError):
    """A pipeline receive did not complete within its timeout (or its peer failed)."""


@contextlib.contextmanager
def preserved(module: nn.Module):
    """Run a block without changing `module`'s buffers (batch-norm statistics) or the random
    state: what a shape pass must not disturb for training to equal the single-process run."""
    bufs = [b for b in module.buffers()]
    saved = [b.detach().clone() for b in bufs]
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, v in zip(bufs, saved):
                    b.copy_(v)


def check_layers(plan, layers: nn.Sequential) -> None:
    """PlanError unless `layers` are the ones `plan` was made for (count and names)."""
    names = [n for n, _ in layers.named_children()]
    if plan.num_layers != len(names) or (plan.layer_names and plan.layer_names != names):
        planned = plan.layer_names or []
        raise PlanError(
            f"the plan was made for {plan.num_layers} layers ({_few(planned)}) but the model "
            f"has {len(names)} ({_few(names)}) with trace={plan.trace!r}: the model changed "
            "or is cut differently since planning; plan it again")


def _few(names: list[str]) -> str:
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "no names"


class Pipeline:
    """`bounds`: the layer range of every chunk, or the module names at which chunks start
    (split points, e.g. ``["blocks.4"]``; see `layers.split_bounds`)."""

    def __init__(self, model: nn.Module, bounds: list[tuple[int, int]] | list[str],
                 stage_ranks: list[list[int]], loss_fn: Callable, schedule: str = "1f1b",
                 microbatches: int = 4, optimizer: Callable = _sgd, vertical_sync: bool = False,
                 record: bool = False, keep_log: bool = False,
                 example_input: torch.Tensor | None = None, trace: str = "auto",
                 recv_timeout: float = 120.0, output: str | None = None):
        # example_input: a micro-batch, needed only for models torch.fx cannot trace
        # (they are captured with torch.export; the same cut as profile_model's)
        self.layers = as_sequential(model, example_input, trace, output)
        if bounds and all(isinstance(b, str) for b in bounds):
            bounds = split_bounds(self.layers, list(bounds))
        self.bounds, self.stage_ranks = [tuple(b) for b in bounds], [list(r) for r in stage_ranks]
        ends = [0] + [b for _, b in self.bounds]
        if any(a != e for (a, _), e in zip(self.bounds, ends)) or ends[-1] != len(self.layers) \
                or any(b <= a for a, b in self.bounds):
            raise PlanError(f"chunk bounds {[list(b) for b in self.bounds]} must cover the "
                            f"model's {len(self.layers)} layers in order, each non-empty")
        self.S, self.C = len(stage_ranks), len(bounds)
        if self.C % self.S:
            raise PlanError(f"{self.C} chunks cannot be spread over {self.S} stages")
        self.v = self.C // self.S
        self.kind, self.M, self.loss_fn = schedule, microbatches, loss_fn
        self.vertical_sync, self.record = vertical_sync, record
        if not recv_timeout > 0:
            raise PlanError(f"recv_timeout must be > 0 seconds, got {recv_timeout!r}")
        self.recv_timeout = float(recv_timeout)
        if vertical_sync and any(len(r) > 1 for r in stage_ranks):
            raise PlanError("vertical sync needs a plan without replicated stages")
        self.rank = dist.get_rank()
        if sum(len(r) for r in stage_ranks) != dist.get_world_size():
            raise PlanError(f"the plan uses {sum(len(r) for r in stage_ranks)} ranks but "
                            f"{dist.get_world_size()} are running")
        self.stage = next(s for s, r in enumerate(stage_ranks) if self.rank in r)
        self.comm = None
        for reps in self.stage_ranks:  # every rank creates every group, in order
            if len(reps) > 1:
                group = dist.new_group(reps)
                if self.rank in reps:
                    self.comm = TorchCommunicator(group)
        self.shared = SharedGrads(self.layers, self.bounds, self.stage_ranks, self.rank)
        if self.shared and schedule == "pipedream":
            e = self.shared.entries[0]
            raise PlanError(f"parameter {' = '.join(e['names'])} is used by stages "
                            f"{e['stages']}; the pipedream schedule updates each stage at its "
                            "own time and cannot keep the copies equal: use a flush schedule "
                            "(gpipe, 1f1b, interleaved) or put those layers in one stage")
        self.my_chunks = [c for c in range(self.C) if c % self.S == self.stage]
        self.modules = {c: nn.Sequential(*self.layers[self.bounds[c][0]:self.bounds[c][1]])
                        for c in self.my_chunks}
        params = {id(p): p for c in self.my_chunks for p in self.modules[c].parameters()
                  if p.requires_grad}  # a parameter two of its chunks use appears once
        self.params = list(params.values())
        self._mutates: list[bool] = [False] * self.C
        self.optimizer = optimizer(self.params) if self.params else None
        self.stash = {c: WeightStash(self.modules[c], keep_log) for c in self.my_chunks}
        self.events: list[tuple] = []
        self._shapes: dict[tuple, list[torch.Size]] = {}
        self._schedules: dict[int, dict[int, list[Action]]] = {}

    @classmethod
    def from_plan(cls, model, plan, loss_fn, schedule="1f1b", chunks_per_stage: int = 1, **kw):
        """The pipeline `plan` describes (a plan given by split points is resolved against the
        model's layers; a plan made for other layers is refused)."""
        kw.setdefault("microbatches", plan.microbatches)
        kw.setdefault("trace", plan.trace)
        kw.setdefault("output", plan.output)
        layers = as_sequential(model, kw.get("example_input"), kw["trace"], kw["output"])
        plan.resolve(layers)
        check_layers(plan, layers)
        ranks = [st.ranks for st in plan.stages]
        bounds = plan.chunk_bounds(chunks_per_stage)  # interleaved: chunk c on stage c % S
        return cls(layers, bounds, ranks, loss_fn, schedule, **kw)

    # -- helpers ---------------------------------------------------------------
    def _boundary_shapes(self, x: torch.Tensor) -> list[torch.Size]:
        """The (shape, dtype) every chunk returns for a micro-batch like `x` (and which chunks
        change their input in place): the whole model run once on a copy of `x`, with the
        model's buffers and the random state left as they were."""
        key = (tuple(x.shape), x.dtype)
        if key not in self._shapes:
            shapes, h = [], x.detach().clone()
            with torch.no_grad(), preserved(self.layers):
                for c, (i, j) in enumerate(self.bounds):
                    inp, version = h, h._version
                    for layer in self.layers[i:j]:
                        h = layer(h)
                    self._mutates[c] = self._mutates[c] or inp._version != version
                    shapes.append((h.shape, h.dtype))
            self._shapes[key] = shapes
        return self._shapes[key]

    def _tag(self, a: Action, direction: str, chunk: int) -> int:
        return (a.mb * self.C + chunk) * 2 + (direction == "B")

    def _post_recv(self, a: Action, shapes, inbox, pending) -> None:
        key = ("F", a.mb, a.chunk) if a.kind == "RECV_F" else ("B", a.mb, a.chunk)
        if key in pending or key in inbox or a.peer == self.rank:
            return
        shape, dtype = shapes[a.chunk - 1] if key[0] == "F" else shapes[a.chunk]
        buf = torch.empty(shape, dtype=dtype)
        pending[key] = (dist.irecv(buf, a.peer, tag=self._tag(a, key[0], a.chunk)), buf, a.peer)

    def _take(self, key, inbox, pending) -> torch.Tensor:
        if key in inbox:
            return inbox.pop(key)
        work, buf, peer = pending.pop(key)
        t0 = time.time()
        try:
            done = work.wait(timeout=datetime.timedelta(seconds=self.recv_timeout))
        except Exception as exc:  # noqa: BLE001 - gloo raises on timeout or a dead peer
            raise self._timeout(key, peer, exc) from exc
        if done is False:
            raise self._timeout(key, peer, None)
        if self.record:
            self.events.append((self.rank, "wait", key[1], key[2], t0, time.time()))
        return buf

    def _timeout(self, key, peer: int, exc) -> TransferTimeout:
        what = "activation" if key[0] == "F" else "gradient"
        cause = f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}" \
            if exc is not None else ""
        return TransferTimeout(
            f"pipeline stage {self.stage} (rank {self.rank}): receiving the {what} of "
            f"micro-batch {key[1]} (chunk {key[2]}) from rank {peer} failed or timed out "
            f"(recv_timeout {self.recv_timeout:g} s); the peer may have died or stopped "
            f"sending{cause}")

    def _sync_grads(self, op: str) -> None:
        """All-reduce the gradients over this stage's replicas (shared parameters are summed
        over every copy by `SharedGrads` instead)."""
        params = [p for p in self.params if id(p) not in self.shared.ids]
        if self.comm is None or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = flatten(grads)
        self.comm.all_reduce(flat, op=op)
        for p, g in zip(params, unflatten(flat, params)):
            p.grad = g.clone()

    # -- the executor ------------------------------------------------------------
    def _run(self, actions: list[Action], xs, ys, shapes, versions=None) -> list[float]:
        inbox, pending, saved, grads_in, sends, losses = {}, {}, {}, {}, [], []
        self._shapes_now = shapes
        async_mode = self.kind == "pipedream"
        computes = [k for k, a in enumerate(actions) if a.kind in COMPUTE]
        f_versions = [versions[a.mb] for a in actions if a.kind == "F"] if versions else []
        f_done = 0
        nxt = 0
        for k, a in enumerate(actions):
            if a.kind in ("RECV_F", "RECV_B"):
                self._post_recv(a, shapes, inbox, pending)
                continue
            if a.kind in COMPUTE:  # post the receives of the next compute action early
                nxt += 1
                end = computes[nxt + 1] if nxt + 1 < len(computes) else len(actions)
                for b in actions[k + 1:end]:
                    if b.kind in ("RECV_F", "RECV_B"):
                        self._post_recv(b, shapes, inbox, pending)
            t0 = time.time()
            c, mb = a.chunk, a.mb
            if a.kind == "F":
                if c == 0:
                    inp = xs[mb]
                else:
                    inp = self._take(("F", mb, c), inbox, pending)
                    inp.requires_grad_(inp.is_floating_point())
                    t0 = time.time()
                # a chunk that changes its input in place runs on a copy (autograd's leaf,
                # or the caller's batch, stays as it is)
                run_on = inp.clone() if self._mutates[c] else inp
                if async_mode:
                    out = self.stash[c].forward(mb, inp, versions[mb] if versions else None,
                                                run_on)
                else:
                    out = self.modules[c](run_on)
                if c == self.C - 1:
                    loss = self.loss_fn(out, ys[mb])
                    losses.append(float(loss.detach()))
                    out = loss if async_mode else loss / self.M
                saved[(mb, c)] = (inp, out)
                f_done += 1
            elif a.kind == "SEND_F":
                out = saved[(mb, c)][1].detach()
                self._send(out, a, "F", c + 1, inbox, sends)
            elif a.kind == "B":
                grad = None if c == self.C - 1 else self._take(("B", mb, c), inbox, pending)
                t0 = time.time()
                inp, out = saved.pop((mb, c))
                if async_mode:
                    gx = self.stash[c].backward(mb, out if c == self.C - 1 else None, grad)
                else:
                    if out.requires_grad:
                        torch.autograd.backward(out, grad)
                    gx = inp.grad if c > 0 else None
                grads_in[(mb, c)] = gx
            elif a.kind == "SEND_B":
                gx = grads_in.pop((mb, c))
                if gx is None:  # an input that carries no gradient (integers): zeros
                    shape, dtype = self._shapes_now[c - 1]
                    gx = torch.zeros(shape, dtype=dtype)
                self._send(gx, a, "B", c - 1, inbox, sends)
            elif a.kind == "U":
                self._sync_grads("avg")
                self.optimizer.step()
                keep = set(range(min(f_versions[f_done:]), self.stash[c].version + 2)) \
                    if versions and f_done < len(f_versions) else (set() if versions else None)
                self.stash[c].updated(keep)
            if self.record and a.kind in ("F", "B", "U", "SEND_F", "SEND_B"):
                self.events.append((self.rank, a.kind, mb, c, t0, time.time()))
            sends = [w for w in sends if not w.is_completed()]
        for w in sends:
            try:
                w.wait(timeout=datetime.timedelta(seconds=self.recv_timeout))
            except Exception as exc:  # noqa: BLE001
                raise TransferTimeout(
                    f"pipeline stage {self.stage} (rank {self.rank}): a send did not complete "
                    f"within {self.recv_timeout:g} s; a peer may have died: {exc}") from exc
        return losses

    def _send(self, t, a: Action, direction: str, chunk: int, inbox, sends) -> None:
        if a.peer == self.rank:
            inbox[(direction, a.mb, chunk)] = t.detach().clone()
        else:
            t = t.contiguous()
            sends.append(dist.isend(t, a.peer, tag=self._tag(a, direction, chunk)))

    # -- public API ----------------------------------------------------------------
    def schedule(self, microbatches: int | None = None) -> dict[int, list[Action]]:
        """The per-rank action lists (built once per micro-batch count, validated by simulation)."""
        n = microbatches or self.M
        if n not in self._schedules:
            sched = build_schedule(self.kind, self.stage_ranks, n, self.v)
            validate_schedule(sched, self.stage_ranks, n, self.v)  # e.g. it could deadlock
            self._schedules[n] = sched
        return self._schedules[n]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """One optimizer step on the batch (x, y) split into micro-batches (flush schedules).

        Returns the mean loss on last-stage ranks (over their micro-batches), else None.
        """
        if self.kind == "pipedream":
            raise PlanError("the pipedream schedule has no flush; use train_async()")
        if len(x) % self.M:
            raise PlanError(f"batch of {len(x)} does not split into {self.M} equal micro-batches")
        xs, ys = x.chunk(self.M), y.chunk(self.M)
        actions = self.schedule()[self.rank]
        losses = self._run(actions, xs, ys, self._boundary_shapes(xs[0]))
        self._sync_grads("sum")
        self.shared.sync()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return sum(losses) * 1.0 / len(losses) if losses else None

    def train_async(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> list[float]:
        """PipeDream: run micro-batches (xs[i], ys[i]) 1F1B without flush, updating after each
        backward with weight stashing (and vertical sync if enabled). Returns the losses seen
        on last-stage ranks, in this rank's order."""
        if self.kind != "pipedream":
            raise PlanError(f"train_async needs schedule='pipedream', not {self.kind!r}")
        n = len(xs)
        for reps in self.stage_ranks:
            if n % len(reps):
                raise PlanError(f"{n} micro-batches do not split over {len(reps)} replicas")
        sched = build_schedule("pipedream", self.stage_ranks, n)
        validate_schedule(sched, self.stage_ranks, n)
        versions = None
        if self.vertical_sync:  # the version stage 0 uses = updates it made before F(mb)
            versions, done = {}, 0
            for a in sched[self.stage_ranks[0][0]]:
                if a.kind == "U":
                    done += 1
                elif a.kind == "F":
                    versions[a.mb] = done
        return self._run(sched[self.rank], xs, ys, self._boundary_shapes(xs[0]), versions)

    def state_by_layer(self) -> dict[int, dict]:
        """{layer index: its state_dict as numpy arrays} for this rank's layers (picklable)."""
        return {l: {k: v.detach().cpu().numpy().copy() for k, v in self.layers[l].state_dict().items()}
                for c in self.my_chunks for l in range(*self.bounds[c])}

    def stash_log(self) -> dict[int, dict]:
        """{chunk: {micro-batch: versions and weight checksums at forward and backward}}."""
        return {c: dict(self.stash[c].log) for c in self.my_chunks}
