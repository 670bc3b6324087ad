"""Turn an ordinary `nn.Module` into a chain of layers that a pipeline can cut.

An `nn.Sequential` already is one: each child is a layer. Any other model is
traced with `torch.fx`; its graph nodes, in execution order, are grouped so
that a cut between two groups carries exactly one tensor (the only value that
is still needed later). A residual block therefore stays in one layer, while a
plain chain of ops yields one layer per op. The result is an `nn.Sequential`
of `torch.fx.GraphModule`s (named after the nodes they hold).

A model `torch.fx` cannot trace (shape-dependent control flow, ...) is
captured with `torch.export.export` on an example input instead (batch
dimension dynamic where the model allows it): its ATen graph is cut only
where the top-level submodule changes (from each node's ``nn_module_stack``;
the children of an `nn.Sequential` count as top-level) and one tensor is live,
so layers are the model's blocks, not single ATen ops.

A model that neither can capture gets a `PlanError` naming the innermost
module that fails and the top-level children at which the user can split the
model by hand.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.fx as fx
import torch.nn as nn

from weft.errors import PlanError

METHODS = ("auto", "fx", "export")
_SEQ = "torch.nn.modules.container.Sequential"


def as_sequential(model: nn.Module, example: torch.Tensor | None = None,
                  method: str = "auto") -> nn.Sequential:
    """`model` as an `nn.Sequential` of layers with one tensor in and one out.

    method: 'fx' (symbolic tracing only), 'export' (torch.export only; needs
    `example`) or 'auto' (fx, then torch.export when fx fails and `example` is given).
    """
    if isinstance(model, nn.Sequential):
        return model
    if method not in METHODS:
        raise PlanError(f"trace method must be one of {', '.join(METHODS)}, got {method!r}")
    fx_exc = None
    if method in ("auto", "fx"):
        try:
            gm = fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure becomes a PlanError
            fx_exc = exc
        else:
            return _chain(gm, model)
    if method == "fx" or example is None:
        note = "" if method == "fx" else "; or pass an example input to try torch.export"
        raise PlanError(_fx_message(model, fx_exc) + note)
    try:
        try:
            return _chain(_export(model, example, dynamic=True), model, cut_key=_top_module)
        except _NoSymbol:  # a batch size the cut pieces cannot recompute: specialise
            return _chain(_export(model, example, dynamic=False), model, cut_key=_top_module)
    except PlanError:
        raise
    except Exception as exc:  # noqa: BLE001
        name, mod, err = _innermost_export_failure(model, example, exc)
        msg = (f"cannot capture {type(model).__name__} with torch.export: {_where(name, mod, model)}"
               f" fails: {_first_line(err)}; {_hint(model, name)}")
        if fx_exc is not None:
            msg = _fx_message(model, fx_exc).split("; split")[0] + "; and " + msg
        raise PlanError(msg) from exc


# -- torch.export ---------------------------------------------------------------
class _NoSymbol(Exception):
    """A cut piece needs a symbolic size that its one input tensor does not carry."""


def _export(model: nn.Module, example: torch.Tensor, dynamic: bool) -> fx.GraphModule:
    from torch.export import Dim, export

    # a dynamic batch size where the model allows it (Dim.AUTO specialises otherwise)
    ep = export(model, (example,), dynamic_shapes=({0: Dim.AUTO},) if dynamic else None)
    gm = ep.module()
    for n in list(gm.graph.nodes):  # the input guard check is not part of any layer
        if n.op == "call_module" and str(n.target).startswith("_guards") and not n.users:
            gm.graph.erase_node(n)
    gm.recompile()
    return gm


def _top_module(node: fx.Node) -> str | None:
    """The top-level block a node belongs to (children of nn.Sequentials count)."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    for path, typ in stack:
        if path and typ != path and not str(typ).endswith(_SEQ):
            return path
    return None


def _symbol(node: fx.Node):
    """The sympy symbol a node's SymInt value is (e.g. the batch size), else None."""
    val = node.meta.get("val")
    if isinstance(val, torch.SymInt) and val.node.expr.is_Symbol:
        return val.node.expr
    return None


def _innermost_export_failure(model: nn.Module, example: torch.Tensor, exc: Exception):
    """The deepest submodule whose own export (on its real input) fails, with its error."""
    from torch.export import export

    inputs: dict[str, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, a))
             for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(example)
    except Exception:  # noqa: BLE001 - the model itself fails: report the export error
        return "", model, exc
    finally:
        for h in hooks:
            h.remove()

    def descend(mod, prefix, err):
        for name, child in mod.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if full not in inputs:
                continue
            try:
                export(child, inputs[full])
            except Exception as child_exc:  # noqa: BLE001
                return descend(child, full, child_exc)
        return prefix, mod, err

    return descend(model, "", exc)


# -- messages -------------------------------------------------------------------
def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _where(name: str, mod: nn.Module, model: nn.Module) -> str:
    return f"module {name!r} ({type(mod).__name__})" if name else \
        f"the top-level forward of {type(model).__name__}"


def _hint(model: nn.Module, name: str) -> str:
    kids = [n for n, _ in model.named_children()]
    if not kids:
        return "write the model as an nn.Sequential of traceable layers"
    return (f"split the model by hand: write it as nn.Sequential over its children "
            f"(split points: {', '.join(kids[:12])}{', ...' if len(kids) > 12 else ''}), "
            f"or make {name or type(model).__name__} traceable")


def _fx_message(model: nn.Module, exc: Exception) -> str:
    name, mod, err = _innermost_failure(model, "", exc)
    return (f"cannot trace {type(model).__name__} with torch.fx: {_where(name, mod, model)} "
            f"fails: {_first_line(err)}; {_hint(model, name)}")


def _innermost_failure(mod: nn.Module, prefix: str, exc: Exception):
    """The deepest submodule whose own trace fails (the culprit), with its error."""
    for name, child in mod.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):  # no forward: look inside
            found = _innermost_failure(child, full, exc)
            if found[0] != full:
                return found
            continue
        try:
            fx.symbolic_trace(child)
        except Exception as child_exc:  # noqa: BLE001
            return _innermost_failure(child, full, child_exc)
    return prefix, mod, exc


# -- cutting a graph into a chain -------------------------------------------------
def _chain(gm: fx.GraphModule, root: nn.Module, cut_key=None) -> nn.Sequential:
    """Cut `gm` after node i iff node i is the only value defined so far that is used
    later (and, with `cut_key`, the key changes between node i and node i+1)."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    syms = {n for n in nodes if _symbol(n) is not None}  # recomputed where used (_extract)
    if len(inputs) != 1:
        raise PlanError(f"{type(root).__name__}.forward takes {len(inputs)} inputs; a pipeline "
                        "needs exactly one tensor input")
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    result = out_node.args[0]
    while isinstance(result, (tuple, list)) and len(result) == 1:
        result = result[0]
    if not isinstance(result, fx.Node):
        raise PlanError(f"{type(root).__name__}.forward returns {type(result).__name__}; a "
                        "pipeline needs a model that returns one tensor")
    order = {n: i for i, n in enumerate(nodes)}
    end = len(nodes)

    def last_use(n):
        return max((order.get(u, end) for u in n.users), default=-1)

    uses = {n: last_use(n) for n in nodes}
    in_use = last_use(inputs[0])
    groups, current = [], []
    for i, n in enumerate(nodes):
        current.append(n)
        if i == end - 1:
            groups.append(current)
            break
        live = [m for m in nodes[: i + 1] if uses[m] > i and m not in syms]
        live += [inputs[0]] if in_use > i else []
        if live == [n] and (cut_key is None or cut_key(n) != cut_key(nodes[i + 1])):
            groups.append(current)
            current = []
    layers, seen = OrderedDict(), set()
    src = inputs[0]
    for g, grp in enumerate(groups):
        out = result if g == len(groups) - 1 else grp[-1]
        if cut_key is not None:
            label = next((k for k in map(cut_key, grp) if k), grp[0].name)
        else:
            label = grp[0].name if len(grp) == 1 else f"{grp[0].name}..{grp[-1].name}"
        label = label.replace(".", "_")
        while label in seen:
            label += "_"
        seen.add(label)
        layers[label] = _extract(gm, grp, src, out)
        src = grp[-1]
    return nn.Sequential(layers)


def _extract(gm: fx.GraphModule, group: list[fx.Node], src: fx.Node, out: fx.Node):
    """A GraphModule running `group` on the one tensor `src` and returning `out`."""
    g = fx.Graph()
    env = {src: g.placeholder("x")}

    def arg(a):
        if a not in env and a.op == "get_attr":  # parameters/buffers: shared with gm
            env[a] = g.get_attr(a.target)
        elif a not in env and _symbol(a) is not None:  # a size: read it off the input
            shape = getattr(src.meta.get("val"), "shape", ())
            dims = [d for d, v in enumerate(shape)
                    if isinstance(v, torch.SymInt) and v.node.expr == _symbol(a)]
            if not dims:
                raise _NoSymbol(a.name)
            env[a] = g.call_function(torch.ops.aten.sym_size.int, (env[src], dims[0]))
        return env[a]

    for n in group:
        env[n] = g.node_copy(n, arg)
    g.output(arg(out))
    return fx.GraphModule(gm, g)
