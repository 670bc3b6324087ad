"""Tensor-parallel rules tried in one process, before a plan uses them.

    bad = emulate(model, {"blocks.*.attn": rules}, example)   # {} when every group holds

A rule group covers one kind of module (an attention: its query / key / value Linears
column-wise, its output projection row-wise, perhaps a head count divided). Whether a
forward written for the whole model computes the same on one rank's share depends on the
forward, not on the names: a fused ``qkv`` split into equal thirds, or a view by a head
count read from a config, does not. So each module a group covers runs as each of the
`tp` ranks of `weft.parallel.tensor` would run it, on the inputs it got in one forward of
the model on `example`:

* a column-wise Linear keeps its rank's rows (``torch.chunk`` along the output, as
  ColwiseParallel's Shard(0));
* a row-wise Linear takes its rank's columns, and returns the sum of every rank's result
  plus its bias (the all-reduce of RowwiseParallel): the ranks run once to collect the
  shares, then again with the sums;
* the group's `divide` attributes are divided by `tp`.

Each rank's output (its first tensor) must equal the whole module's. Eval mode, no
gradients, the model's own weights (a rank's share is a view of them; only the recorded
inputs are copied, for each call, so a forward that changes them in place or updates a
cache object does not change the next call's).
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves

from weft.errors import PlanError
from weft.plan.check import matching, tp_styles
from weft.plan.format import Mesh, Plan, TPRule


def _first_tensor(out):
    return next((x for x in tree_leaves(out) if isinstance(x, torch.Tensor)), None)


def _inputs(args, kwargs):
    """A copy of a recorded call: its tensors cloned, its other objects (a cache the
    forward updates, say) copied."""
    memo = {id(t): t.clone() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
    try:
        return copy.deepcopy((args, kwargs), memo)
    except Exception:  # an object that cannot be copied: the call gets the original
        return args, kwargs


@contextlib.contextmanager
def _as_rank(mod, col, row, divide, r, tp, shares, sums):
    """`mod` patched to run as rank r of tp: `shares[name]` collects the row-wise Linears'
    partial results per call; with `sums` (name -> list per call), they return those."""
    saved = {}
    calls = {name: 0 for name in row}

    def colwise(lin):
        w, b = lin.weight.chunk(tp, 0)[r], None if lin.bias is None else lin.bias.chunk(tp, 0)[r]
        return lambda x: F.linear(x, w, b)

    def rowwise(name, lin):
        w = lin.weight.chunk(tp, 1)[r]

        def fwd(x):
            if x.shape[-1] != w.shape[1]:
                raise _Mismatch(f"{name} (row-wise) got inputs {x.shape[-1]} wide; a rank's "
                                f"share of its weight takes {w.shape[1]}")
            part = F.linear(x, w)
            k = calls[name]
            calls[name] += 1
            if sums is None:
                shares.setdefault(name, []).append(part)
                return part if lin.bias is None else part + lin.bias
            return sums[name][k]
        return fwd

    try:
        for name, lin in col.items():
            lin.forward = colwise(lin)
        for name, lin in row.items():
            lin.forward = rowwise(name, lin)
        for attr in divide:
            saved[attr] = getattr(mod, attr)
            setattr(mod, attr, saved[attr] // tp)
        yield
    finally:
        for lin in (*col.values(), *row.values()):
            lin.__dict__.pop("forward", None)
        for attr, v in saved.items():
            setattr(mod, attr, v)


class _Mismatch(Exception):
    pass


def _tolerance(t: torch.Tensor) -> float:
    return 1e-3 if t.dtype in (torch.float32, torch.float64) else 3e-2


def _one(mod, col, row, divide, tp, args, kwargs) -> str | None:
    """None if `mod` run as each of tp ranks gives its whole output, else why not."""
    a, k = _inputs(args, kwargs)
    whole = _first_tensor(mod(*a, **k))
    if whole is None:
        return "its output holds no tensor"
    shares: dict[str, list] = {}
    try:
        for r in range(tp):
            with _as_rank(mod, col, row, divide, r, tp, shares, None):
                a, k = _inputs(args, kwargs)
                mod(*a, **k)
        per_rank = {n: len(v) // tp for n, v in shares.items()}
        sums = {n: [sum(v[r * per_rank[n] + c] for r in range(tp)) +
                    (0 if row[n].bias is None else row[n].bias) for c in range(per_rank[n])]
                for n, v in shares.items()}
        for r in range(tp):
            with _as_rank(mod, col, row, divide, r, tp, {}, sums):
                a, k = _inputs(args, kwargs)
                got = _first_tensor(mod(*a, **k))
            if got is None or got.shape != whole.shape:
                return (f"rank {r} of {tp} returns shape "
                        f"{None if got is None else tuple(got.shape)}, the whole module "
                        f"{tuple(whole.shape)}")
            err = float((got.float() - whole.float()).norm() / (whole.float().norm() + 1e-12))
            if err > _tolerance(whole):
                return f"rank {r} of {tp} computes another result (relative error {err:.2g})"
    except _Mismatch as e:
        return str(e)
    except Exception as e:  # the forward itself refuses its share
        return f"its forward fails on a rank's share: {type(e).__name__}: {e}"
    return None


def emulate(model: nn.Module, groups: dict[str, tuple[TPRule, ...]], example,
            tp: int = 2) -> dict[str, str]:
    """{group: why} for every group (rules on the module pattern `group` and its Linear
    children) some module of which computes otherwise on a rank's share; `example` is one
    batch of the model's input (a tuple: positional arguments)."""
    mods = dict(model.named_modules())
    targets = {g: matching(g, model) for g in groups}
    captured: dict[str, tuple] = {}
    def record(n, a, k):  # the first call's inputs, copied once
        if n not in captured:
            captured[n] = _inputs(a, k)

    handles = [mods[n].register_forward_pre_hook(
        lambda m, a, k, n=n: record(n, a, k), with_kwargs=True)
        for names in targets.values() for n in names]
    modes = {m: m.training for m in model.modules()}
    bad: dict[str, str] = {}
    try:
        model.eval()
        with torch.no_grad():
            try:
                model(*(example if isinstance(example, tuple) else (example,)))
            except Exception as e:
                raise PlanError("trying the tensor-parallel rules: the model's forward on the "
                                f"example input fails: {type(e).__name__}: {e}") from e
            for h in handles:
                h.remove()
            handles = []
            for g, rules in groups.items():
                # the modules each rule applies to, matched as weft.parallel.tensor does
                styles = tp_styles(Plan(mesh=Mesh(tp=tp), tensor_parallel=tuple(rules)),
                                   model, strict=False)
                divides = {n: r.divide for r in rules if r.divide
                           for n in matching(r.module, model)}
                for name in targets[g]:
                    if name not in captured:
                        continue  # not called in this forward: nothing to try it on
                    inside = {n: rule.style for n, (_, rule) in styles.items()
                              if n.startswith(name + ".") and isinstance(mods[n], nn.Linear)}
                    col = {n: mods[n] for n, st in inside.items() if st == "colwise"}
                    row = {n: mods[n] for n, st in inside.items() if st == "rowwise"}
                    why = _one(mods[name], col, row, divides.get(name, ()), tp, *captured[name])
                    if why:
                        bad[g] = f"{name}: {why}"
                        break
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.train(t)
    return bad


__all__ = ["emulate"]
