"""Turn an ordinary `nn.Module` into a chain of layers that a pipeline can cut.

    seq = as_sequential(model)                        # nn.Sequential, one tensor in and out
    find_blocks(model)                                # ['blocks.0', 'blocks.1', ...]
    split_bounds(seq, ["blocks.2"])                   # [(0, 3), (3, 6)]: layer ranges
    stages = split_by_names(model, ["blocks.2"])      # one module per stage

An `nn.Sequential` already is a chain: each child is a layer. Any other model is traced with
`torch.fx` with its *blocks* as leaf modules (`find_blocks`: the children of `nn.ModuleList`
/ `nn.Sequential` / `nn.ModuleDict` containers, such as the transformer layers of a GPT or the
residual blocks of a ResNet stage); its graph nodes, in execution order, are grouped so that a
cut between two groups carries exactly one tensor (the only value still needed later). A
12-block transformer therefore offers a cut before every block, a residual block stays in one
layer, and root-level code (embeddings, heads, a plain chain of ops) yields one layer per
op. Each layer is a `torch.fx.GraphModule` that calls the model's own block objects under
their own qualified names (``blocks.3``), so a stage's blocks can be changed in place (e.g.
tensor-parallelised) and a block's forward runs as written, reading its attributes at run time.

A model `torch.fx` cannot trace (shape-dependent control flow in the top-level forward, a
forward taking ``**kwargs`` like Hugging Face's), or whose traced blocks cannot be separated
(a value computed from the input's size, such as an attention mask built from
``x.shape[1]``, flows into every block), is captured with `torch.export.export` on an
example input instead (batch dimension dynamic where the model allows it): its ATen graph is
cut only between blocks (from each node's ``nn_module_stack``; outside blocks, between
modules) and where one tensor is live, so layers are the model's blocks, not single ATen ops.
Values that need neither the input's data nor a parameter (position ids, attention masks) are
recomputed by each layer that uses them instead of being carried across cuts. These layers
are ATen graphs: they hold the model's parameters, not its block objects.

A structured output (tuple, dict, dataclass, Hugging Face ``ModelOutput``) is reduced to its
only tensor, or to the field `output` names (``output="logits"``); with several tensors and
no `output`, the `PlanError` lists them. A model that neither path can capture gets a
`PlanError` naming the innermost module that fails and the children at which to split it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from weft.errors import PlanError
from weft.parallel.pipeline.capture import (NoSymbol, block_key, cut, export_graph,
                                            find_blocks, trace_fx)

METHODS = ("auto", "fx", "export")
MODULES_ATTR = "weft_modules"  # on each layer: the qualified names of the modules it runs

__all__ = ["as_sequential", "find_blocks", "layer_modules", "split_bounds", "split_by_names",
           "shared_parameters", "mutates_input", "METHODS"]


def _capture(model: nn.Module, example, method: str, output: str | None):
    """(Cut, layers) of a non-Sequential model."""
    if method not in METHODS:
        raise PlanError(f"trace method must be one of {', '.join(METHODS)}, got {method!r}")
    fx_exc = None
    if method in ("auto", "fx"):
        try:
            gm = trace_fx(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure becomes a PlanError
            fx_exc = exc
        else:
            traced = _layers(cut(gm, model, output=output))
            if method == "fx" or example is None or not _merged_blocks(traced[0], model):
                return traced
            try:  # a value besides the hidden state flows into every block: try export
                exported = _capture(model, example, "export", output)
            except PlanError:
                return traced
            return exported if len(exported[1]) > len(traced[1]) else traced
    if method == "fx" or example is None:
        note = "" if method == "fx" else "; or pass an example input to try torch.export"
        raise PlanError(_fx_message(model, fx_exc) + note)
    try:
        try:
            return _layers(cut(export_graph(model, example, True), model, block_key(model),
                               output))
        except NoSymbol:  # a batch size the cut pieces cannot recompute: specialise
            return _layers(cut(export_graph(model, example, False), model, block_key(model),
                               output))
    except PlanError:
        raise
    except Exception as exc:  # noqa: BLE001
        name, mod, err = _innermost_export_failure(model, example, exc)
        msg = (f"cannot capture {type(model).__name__} with torch.export: {_where(name, mod, model)}"
               f" fails: {_first_line(err)}; {_hint(model, name)}")
        if fx_exc is not None:
            msg = _fx_message(model, fx_exc).split("; split")[0] + "; and " + msg
        raise PlanError(msg) from exc


def _merged_blocks(c, model: nn.Module) -> bool:
    """Whether some piece of `c` runs two or more of the model's blocks."""
    blocks = set(find_blocks(model))
    return any(len(blocks.intersection(c.modules(k))) > 1 for k in range(len(c.groups)))


def _layers(c):
    layers = OrderedDict()
    for k, label in enumerate(c.labels):
        layer = c.piece(k, k + 1)
        setattr(layer, MODULES_ATTR, c.modules(k))
        layers[label] = layer
    return c, nn.Sequential(layers)


def as_sequential(model: nn.Module, example: torch.Tensor | None = None,
                  method: str = "auto", output: str | None = None) -> nn.Sequential:
    """`model` as an `nn.Sequential` of layers with one tensor in and one out.

    method: 'fx' (symbolic tracing only), 'export' (torch.export only; needs `example`) or
    'auto' (fx, then torch.export when fx fails and `example` is given). output: the field
    of a structured output to keep (see the module doc).
    """
    if isinstance(model, nn.Sequential):
        return model
    return _capture(model, example, method, output)[1]


def layer_modules(seq: nn.Sequential) -> list[list[str]]:
    """For each layer of `seq` (from `as_sequential`), the qualified names (in the original
    model) of the modules it runs; for a plain `nn.Sequential`, each child and its
    submodules."""
    out = []
    for name, layer in seq.named_children():
        mods = getattr(layer, MODULES_ATTR, None)
        if mods is None:
            mods = [name] + [f"{name}.{sub}" for sub, _ in layer.named_modules() if sub]
        out.append(list(mods))
    return out


def split_bounds(seq, split_points: list[str]) -> list[tuple[int, int]]:
    """The layer ranges of the stages that start at the modules `split_points` names (in
    model order; the first stage starts at layer 0). `seq` is an `as_sequential` result or
    its `layer_modules`. A stage starts at the first layer that runs its module."""
    mods = layer_modules(seq) if isinstance(seq, nn.Module) else [list(m) for m in seq]
    if isinstance(split_points, str):
        split_points = [split_points]
    starts = [0]
    for sp in split_points:
        sp = str(sp).strip()
        hits = [i for i, ms in enumerate(mods) if any(m == sp or m.startswith(sp + ".")
                                                      for m in ms)]
        if not hits:
            known = [m for ms in mods for m in ms if m.count(".") <= sp.count(".")]
            raise PlanError(f"split point {sp!r} names no module that the model's layers run; "
                            f"modules at that depth: {_short(list(dict.fromkeys(known)))}")
        k = hits[0]
        if k == 0:
            raise PlanError(f"split point {sp!r} is in the model's first layer: a stage must "
                            "start after it")
        if k <= starts[-1]:
            raise PlanError(f"split point {sp!r} starts layer {k}, not after the previous "
                            f"split point's layer {starts[-1]}: give split points in model "
                            "order, each in a later layer")
        starts.append(k)
    return list(zip(starts, starts[1:] + [len(mods)]))


def split_by_names(model: nn.Module, split_points: list[str], example=None,
                   method: str = "auto", output: str | None = None) -> list[nn.Module]:
    """`model` cut before each module `split_points` names: one module per stage, taking one
    tensor and returning one. Each stage holds the model's own submodules under their
    qualified names (``stage.get_submodule("blocks.3") is model.blocks[3]``; its
    ``state_dict`` keys are the model's), so a stage's blocks can be parallelised in place
    (e.g. `parallelize_module` with name patterns). Chaining the stages computes `model`."""
    if isinstance(model, nn.Sequential):
        names = [n for n, _ in model.named_children()]
        return [nn.Sequential(OrderedDict((names[i], model[i]) for i in range(a, b)))
                for a, b in split_bounds(model, split_points)]
    c, seq = _capture(model, example, method, output)
    return [c.piece(a, b) for a, b in split_bounds(seq, split_points)]


def shared_parameters(seq: nn.Sequential) -> list[dict]:
    """Parameters that two or more layers of `seq` use (tied embeddings, a module called
    twice): ``{"names": [...], "layers": [...], "numel": n, "bytes": b, "param": p}`` each,
    ordered by first layer."""
    found: dict[int, dict] = {}
    for i, layer in enumerate(seq):
        for name, p in layer.named_parameters(remove_duplicate=False):
            e = found.setdefault(id(p), {"names": [], "layers": [], "numel": p.numel(),
                                         "bytes": p.numel() * p.element_size(), "param": p})
            if name not in e["names"]:
                e["names"].append(name)
            if i not in e["layers"]:
                e["layers"].append(i)
    return sorted((e for e in found.values() if len(e["layers"]) > 1),
                  key=lambda e: (e["layers"], e["names"]))


def mutates_input(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether `module` changes its input in place (an in-place op on it or on a view of it):
    run on a copy of `x` without gradients, compare the version counter. A stage input that
    autograd tracks must then be copied first (an in-place op on a leaf that requires grad
    is an error)."""
    probe = x.detach().clone()
    before = probe._version
    with torch.no_grad():
        module(probe)
    return probe._version != before


def _short(names: list[str]) -> str:
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


# -- messages -------------------------------------------------------------------------
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
            f"(split points: {_short(kids)}), or make {name or type(model).__name__} traceable")


def _fx_message(model: nn.Module, exc: Exception) -> str:
    name, mod, err = _innermost_failure(model, "", exc, set(find_blocks(model)))
    return (f"cannot trace {type(model).__name__} with torch.fx: {_where(name, mod, model)} "
            f"fails: {_first_line(err)}; {_hint(model, name)}")


def _innermost_failure(mod: nn.Module, prefix: str, exc: Exception, blocks: set):
    """The deepest submodule whose own trace fails (the culprit), with its error; blocks are
    leaves of the trace, so they are not culprits."""
    for name, child in mod.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if full in blocks:
            continue
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):  # no forward: look inside
            found = _innermost_failure(child, full, exc, blocks)
            if found[0] != full:
                return found
            continue
        try:
            trace_fx(child)
        except Exception as child_exc:  # noqa: BLE001
            return _innermost_failure(child, full, child_exc, blocks)
    return prefix, mod, exc
