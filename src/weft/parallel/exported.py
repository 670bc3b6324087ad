"""Capture a model's forward with torch.export where torch.fx cannot trace it, for the cut.

    stages = split_model(hf_model, ["transformer.h.2"], example=micro_batch)  # uses this

`weft.parallel.split` traces the forward with torch.fx, the modules below the cuts left as
calls. A forward with Python control flow on shapes or on options (a Hugging Face model's:
`if batch_size != position_ids.shape[0]`, caches, masks) stops torch.fx. torch.export runs
it on an example instead, keeping the batch dimension symbolic, and records the calling
convention of every module the cut keeps whole (`preserve_module_call_signature`); those
are then put back as calls of the model's own module objects (torch.export's
`_swap_modules`), so parameters keep their names and tensor parallelism, activation
checkpointing and fully_shard apply to the real modules, as under torch.fx. The pytree
bookkeeping torch.export leaves between the calls is folded away here, so the values that
cross a cut are the tensors themselves.

What is baked in: the forward above the cut modules runs as recorded on the example (its
branches, every size but the batch's, and train or eval mode for what it does itself, such
as a dropout outside every kept module). A module call that takes something other than
tensors and constants (a Hugging Face `DynamicCache`) cannot be kept whole: build such a
model with its cache off (`config.use_cache = False`).
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Sequence

import torch
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree
from torch import fx, nn

from weft.errors import PlanError


def kept_modules(model: nn.Module, inner: set[str]) -> list[str]:
    """The modules a cut keeps whole: children of the split points' ancestors (`inner`, the
    root included as "") that are not ancestors themselves."""
    out = []
    for name, mod in model.named_modules():
        if name in inner:
            for child, _ in mod.named_children():
                q = f"{name}.{child}" if name else child
                if q not in inner:
                    out.append(q)
    return out


def export_graph(model: nn.Module, split: Sequence[str], inner: set[str],
                 example) -> tuple[fx.Graph, nn.Module]:
    """(graph, root): the forward as a flat fx graph calling the kept modules (the model's
    own objects), and the module its other attributes live on."""
    from torch.export import Dim, export

    try:
        from torch.export._swap import _swap_modules
    except ImportError:  # a private torch function
        raise PlanError(f"pipeline.split: torch.fx cannot trace {type(model).__name__}, and "
                        f"this torch ({torch.__version__}) has no torch.export._swap to "
                        "capture it instead") from None
    args = example if isinstance(example, tuple) else (example,)
    kept = kept_modules(model, inner)
    try:
        with warnings.catch_warnings():  # unflatten warns of the pytree specs it stores
            warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
            ep = export(model, args, dynamic_shapes=tuple({0: Dim.AUTO} for _ in args),
                        strict=False, preserve_module_call_signature=tuple(kept))
            gm = _swap_modules(ep, {q: model.get_submodule(q) for q in kept})
    except Exception as exc:  # noqa: BLE001 - any capture failure is the model's forward
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = ("; a module called with a cache object cannot be kept whole: build the model "
                "with its cache off (a Hugging Face config's use_cache=False)"
                if "Cache" in first else "")
        raise PlanError(f"pipeline.split: cannot cut {type(model).__name__} at {list(split)}: "
                        "torch.fx cannot trace its forward, nor torch.export capture it "
                        f"({type(exc).__name__}: {first[:200]}){hint}") from None
    _restore_constants(gm.graph, ep, kept)
    fold_pytrees(gm.graph)
    gm.graph.eliminate_dead_code()
    return gm.graph, gm


def _restore_constants(graph: fx.Graph, ep, kept: list[str]) -> None:
    """torch.export's swap passes None for every constant argument of a kept module's call
    (its `_construct_inputs` looks constants up among the graph's nodes); put back the
    values the signature recorded (a `use_cache=False`, a `flag=True`)."""
    from torch.export.exported_program import ConstantArgument

    sigs = {e.fqn: e.signature for e in ep.module_call_graph if e.fqn in kept and e.signature}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in sigs:
            continue
        consts = {i: a.value for i, a in enumerate(sigs[node.target].inputs)
                  if isinstance(a, ConstantArgument) and a.value is not None}
        if not consts:
            continue
        unflat = _unflatten_feeding(node)
        if unflat is None or len(unflat.args[0]) != len(sigs[node.target].inputs):
            raise PlanError(f"pipeline.split: cannot tell which arguments of {node.target!r} "
                            "torch.export recorded as constants; its capture is not used")
        leaves = list(unflat.args[0])
        for i, v in consts.items():
            leaves[i] = v
        unflat.args = (leaves,) + tuple(unflat.args[1:])


def _unflatten_feeding(call: fx.Node) -> fx.Node | None:
    """The tree_unflatten node that builds `call`'s (args, kwargs), through getitems."""
    for a in call.all_input_nodes:
        while a.op == "call_function" and a.target is operator.getitem:
            a = a.args[0]
        if a.op == "call_function" and a.target is pytree.tree_unflatten:
            return a
    return None


class _Ref:
    """A value known only when the graph runs: the node that makes it."""

    __slots__ = ("node",)

    def __init__(self, node: fx.Node):
        self.node = node


_CONTAINERS = (tuple, list, dict)


def fold_pytrees(graph: fx.Graph) -> None:
    """Replace tree_flatten / tree_unflatten / tree_flatten_spec and the getitems on them by
    the values they stand for, where those are known before the graph runs (a node's output
    or a constant); what stays unknown is left as it was."""
    owner = graph.owning_module
    val: dict[fx.Node, object] = {}

    def static(a):
        return fx.node.map_aggregate(a, lambda x: val[x] if isinstance(x, fx.Node) else x)

    for node in graph.nodes:
        val[node] = _Ref(node)
        if node.op == "get_attr" and owner is not None:
            obj = _attr(owner, node.target)
            if isinstance(obj, pytree.TreeSpec):
                val[node] = obj
        if node.op != "call_function":
            continue
        args = static(node.args)
        try:
            if node.target is pytree.tree_flatten and _all_static(args[0]):
                val[node] = pytree.tree_flatten(args[0])
            elif node.target is pytree.tree_unflatten and isinstance(args[1], pytree.TreeSpec) \
                    and isinstance(args[0], (list, tuple)):
                val[node] = pytree.tree_unflatten(list(args[0]), args[1])
            elif node.target is fx_pytree.tree_flatten_spec and \
                    isinstance(args[1], pytree.TreeSpec):
                if args[1].is_leaf():
                    val[node] = [args[0]]
                elif not isinstance(args[0], _Ref):  # (a module's output is taken apart
                    val[node] = fx_pytree.tree_flatten_spec(args[0], args[1])  # by getitems)
            elif node.target is operator.getitem and isinstance(args[0], _CONTAINERS):
                val[node] = args[0][args[1]]
        except Exception:  # noqa: BLE001 - a structure not known here: left to run
            val[node] = _Ref(node)
    for node in list(graph.nodes):
        v = val[node]
        if isinstance(v, _Ref):
            if v.node is not node:
                node.replace_all_uses_with(v.node)
        elif _constant(v) or _literal(v):  # a constant, or a tuple / list / dict of values
            lit = _as_literal(v)
            for user in list(node.users):
                if user.op == "output" and not _constant(v):
                    continue  # the forward's result stays a structure (split._rebuilt)
                user.args = fx.node.map_arg(user.args, lambda x, n=node: lit if x is n else x)
                user.kwargs = fx.node.map_arg(user.kwargs, lambda x, n=node: lit if x is n else x)


def _literal(v) -> bool:
    """A plain tuple / list / dict (not a subclass such as a ModelOutput) of known values."""
    if type(v) in (tuple, list):
        return all(_literal(x) for x in v)
    if type(v) is dict:
        return all(_literal(x) for x in v.values())
    return isinstance(v, _Ref) or _constant(v)


def _as_literal(v):
    if isinstance(v, _Ref):
        return v.node
    if type(v) in (tuple, list):
        return type(v)(_as_literal(x) for x in v)
    if type(v) is dict:
        return {k: _as_literal(x) for k, x in v.items()}
    return v


def _attr(owner: nn.Module, target: str):
    obj = owner
    for atom in target.split("."):
        obj = getattr(obj, atom, None)
    return obj


def _all_static(x) -> bool:
    return all(isinstance(leaf, _Ref) or _constant(leaf) for leaf in pytree.tree_leaves(x))


def _constant(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, torch.dtype, torch.device))
