"""Turn an ordinary `nn.Module` into a chain of layers that a pipeline can cut.

An `nn.Sequential` already is one: each child is a layer. Any other model is
traced with `torch.fx`; its graph nodes, in execution order, are grouped so
that a cut between two groups carries exactly one tensor (the only value that
is still needed later). A residual block therefore stays in one layer, while a
plain chain of ops yields one layer per op. The result is an `nn.Sequential`
of `torch.fx.GraphModule`s (named after the nodes they hold).

A model `torch.fx` cannot trace (data-dependent control flow, ...) gets a
`PlanError` naming the innermost module that fails and the top-level children
at which the user can split the model by hand.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.split_module import split_module

from weft.errors import PlanError


def as_sequential(model: nn.Module) -> nn.Sequential:
    """`model` as an `nn.Sequential` of layers with one tensor in and one out."""
    if isinstance(model, nn.Sequential):
        return model
    gm = _trace(model)
    return _chain(gm, model)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure becomes a PlanError
        name, mod, err = _innermost_failure(model, "", exc)
        where = f"module {name!r} ({type(mod).__name__})" if name else \
            f"the top-level forward of {type(model).__name__}"
        kids = [n for n, _ in model.named_children()]
        hint = (f"split the model by hand: write it as nn.Sequential over its children "
                f"(split points: {', '.join(kids[:12])}{', ...' if len(kids) > 12 else ''}), "
                f"or make {name or type(model).__name__} traceable"
                if kids else "write the model as an nn.Sequential of traceable layers")
        raise PlanError(f"cannot trace {type(model).__name__} with torch.fx: {where} fails: "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                        f"; {hint}") from exc


def _innermost_failure(mod: nn.Module, prefix: str, exc: Exception):
    """The deepest submodule whose own trace fails (the culprit), with its error."""
    for name, child in mod.named_children():
        full = f"{prefix}.{name}" if prefix else name
        try:
            fx.symbolic_trace(child)
        except Exception as child_exc:  # noqa: BLE001
            return _innermost_failure(child, full, child_exc)
    return prefix, mod, exc


def _chain(gm: fx.GraphModule, root: nn.Module) -> nn.Sequential:
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise PlanError(f"{type(root).__name__}.forward takes {len(inputs)} inputs; a pipeline "
                        "needs exactly one tensor input")
    order = {n: i for i, n in enumerate(nodes)}
    last_use = {}
    for n in nodes:
        last_use[n] = max((order.get(u, len(nodes)) for u in n.users), default=order[n])
    # Cut after node i iff node i is the only value defined so far that is used later.
    groups, current = [], []
    for i, n in enumerate(nodes):
        current.append(n)
        live = [m for m in nodes[: i + 1] if last_use[m] > i]
        live += [p for p in inputs if max((order.get(u, len(nodes)) for u in p.users), default=-1) > i]
        if live == [n] or i == len(nodes) - 1:
            groups.append(current)
            current = []
    part = {n: g for g, grp in enumerate(groups) for n in grp}
    split = split_module(gm, root, lambda n: part[n], keep_original_order=True)
    layers = OrderedDict()
    for g, grp in enumerate(groups):
        sub = getattr(split, f"submod_{g}")
        label = grp[0].name if len(grp) == 1 else f"{grp[0].name}..{grp[-1].name}"
        layers[label.replace(".", "_")] = sub
    return nn.Sequential(layers)
