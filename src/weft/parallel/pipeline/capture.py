"""Capture a model as one graph and cut it where a single tensor is live (torch.fx, torch.export).

`trace_fx` traces with `torch.fx`, keeping the model's *blocks* (see `find_blocks`: the
non-container children of an `nn.ModuleList` / `nn.Sequential` / `nn.ModuleDict`, e.g. the
transformer layers of GPT-2 or the residual blocks of a ResNet stage) as leaf modules: the
graph calls the original block objects, whose own forward runs as written (reading its
attributes at run time, data-dependent branches included). `export_graph` captures the model
with `torch.export` (an ATen graph) where torch.fx cannot trace it.

`cut` groups the graph's nodes, in execution order, into pieces: a cut after node i when node
i is the only value still needed later (with `key`, also only where the key changes: the
export path cuts only between blocks or modules). Values that depend on neither the input's
data nor a trainable parameter (position ids, causal masks, sizes read off the batch) are not
live across a cut: each piece that uses them recomputes them (`_extract`), so a mask computed
once at the top of a GPT-2 does not pin its blocks together. A structured output (a tuple, a
dict, a dataclass such as Hugging Face's ``ModelOutput``) is reduced to one tensor: the only
tensor in it, or the one `output` names (``"logits"``, ``"0"``, ``"z.1"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from weft.errors import PlanError

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def find_blocks(model: nn.Module) -> list[str]:
    """Qualified names of `model`'s blocks, in registration order: every child of a container
    (`nn.Sequential`, `nn.ModuleList`, `nn.ModuleDict`) that is not itself a container. A
    block's own submodules are not listed (a block is a unit); containers nested in
    containers are looked through."""
    out: list[str] = []

    def walk(mod: nn.Module, prefix: str, inside: bool) -> None:
        for name, child in mod.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if inside and not isinstance(child, CONTAINERS):
                out.append(full)
            else:
                walk(child, full, isinstance(child, CONTAINERS))

    walk(model, "", isinstance(model, CONTAINERS))
    return out


class _BlockTracer(fx.Tracer):
    """torch.fx's tracer with the model's blocks as leaves."""

    def __init__(self, blocks: set[str]):
        super().__init__()
        self.blocks = blocks

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.blocks or super().is_leaf_module(m, qualname)


def trace_fx(model: nn.Module) -> fx.GraphModule:
    """`model` traced by torch.fx with its blocks as leaf modules (submodules keep their
    qualified names, and are the model's own objects)."""
    tracer = _BlockTracer(set(find_blocks(model)))
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


class NoSymbol(Exception):
    """A cut piece needs a symbolic size that its one input tensor does not carry."""


def export_graph(model: nn.Module, example: torch.Tensor, dynamic: bool) -> fx.GraphModule:
    """`model` captured by torch.export on `example` (batch dimension dynamic if `dynamic`)."""
    from torch.export import Dim, export

    # a dynamic batch size where the model allows it (Dim.AUTO specialises otherwise)
    ep = export(model, (example,), dynamic_shapes=({0: Dim.AUTO},) if dynamic else None)
    gm = ep.module()
    for n in list(gm.graph.nodes):  # the input guard check is not part of any layer
        if n.op == "call_module" and str(n.target).startswith("_guards") and not n.users:
            gm.graph.erase_node(n)
    gm.recompile()
    return gm


# -- keys: which module a node belongs to ---------------------------------------------
def module_paths(node: fx.Node) -> list[str]:
    """The qualified names of the modules `node` runs in, outermost first (from its
    ``nn_module_stack``; a call_module node's own target and a get_attr's owner too)."""
    paths = [p for p, _ in (node.meta.get("nn_module_stack") or {}).values() if p]
    if node.op == "call_module":
        paths.append(str(node.target))
    elif node.op == "get_attr" and "." in str(node.target):
        paths.append(str(node.target).rpartition(".")[0])
    return list(dict.fromkeys(paths))


def block_key(root: nn.Module):
    """A key function for `cut` on an export graph: a node's outermost block (see
    `find_blocks`), else its innermost module, else None (code of the top-level forward)."""
    blocks = set(find_blocks(root))

    def key(node: fx.Node) -> str | None:
        paths = module_paths(node)
        for p in paths:
            if p in blocks:
                return p
        return paths[-1] if paths else None

    return key


# -- the output ---------------------------------------------------------------------------
def _leaf_name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return ".".join(parts)


def select_output(gm: fx.GraphModule, root: nn.Module, output: str | None) -> fx.Node:
    """The one node `gm` should return: the only tensor of a structured output or the leaf
    `output` names; the other outputs (and what only they need) are removed from `gm`."""
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    value = out_node.args[0]
    info = getattr(gm.graph._codegen, "pytree_info", None)  # torch.export: flat outputs
    if info is not None and info.out_spec is not None:
        value = pytree.tree_unflatten(list(value), info.out_spec)
    leaves = [(_leaf_name(p), v) for p, v in pytree.tree_flatten_with_path(value)[0]
              if isinstance(v, fx.Node)]
    what = f"{type(root).__name__}.forward"
    if output is not None:
        found = [v for name, v in leaves if name == str(output)]
        if not found:
            raise PlanError(f"output={output!r}: {what} returns no such field; its tensors are "
                            f"{_names(leaves)}")
        result = found[0]
    elif len(leaves) == 1:
        result = leaves[0][1]
    else:
        hint = ""
        if any("past_key_values" in n or "cache" in n.lower() for n, _ in leaves):
            hint = " (or build the model with use_cache=False so it returns no cache)"
        raise PlanError(f"{what} returns {type(value).__name__} with {len(leaves)} tensors "
                        f"({_names(leaves)}); a pipeline needs one: set output to the one the "
                        f"loss uses, e.g. output={leaves[0][0]!r} (as_sequential(output=...), "
                        f"Pipeline(output=...), `weft plan pipeline --output`){hint}"
                        if leaves else f"{what} returns no tensor")
    dropped = {v for _, v in leaves} - {result}
    if out_node.args[0] is not result:
        out_node.args = (result,)
    if dropped:  # remove what only the dropped outputs need
        keep = _ancestors([result])
        gone = _ancestors(dropped) - keep
        for n in reversed(list(gm.graph.nodes)):
            if n in gone and not n.users and n.op != "placeholder":
                gm.graph.erase_node(n)
    return result


def _names(leaves) -> str:
    names = [n or "<value>" for n, _ in leaves]
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def _ancestors(nodes) -> set:
    seen, todo = set(), list(nodes)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


# -- cutting ------------------------------------------------------------------------------
def symbol(node: fx.Node):
    """The sympy symbol a node's SymInt value is (e.g. the batch size), else None."""
    val = node.meta.get("val")
    if isinstance(val, torch.SymInt) and val.node.expr.is_Symbol:
        return val.node.expr
    return None


def free_nodes(gm: fx.GraphModule) -> set:
    """Nodes that depend on neither the input's data nor a trainable parameter: constants,
    buffers, sizes of the input (torch.export symbols) and what is computed from them only."""
    trainable = {name for name, p in gm.named_parameters(remove_duplicate=False)
                 if p.requires_grad}
    free: set = set()
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "output"):
            continue
        if n.op == "get_attr":
            if n.target not in trainable:
                free.add(n)
        elif symbol(n) is not None:
            free.add(n)
        elif n.op == "call_module" and any(p.requires_grad for p in
                                           gm.get_submodule(n.target).parameters()):
            continue
        elif all(i in free for i in n.all_input_nodes):
            free.add(n)
    return free


@dataclass
class Cut:
    """A graph cut into pieces: piece k runs ``groups[k]`` on the one tensor ``srcs[k]``
    and returns ``outs[k]``."""

    gm: fx.GraphModule
    groups: list[list[fx.Node]]
    srcs: list[fx.Node]
    outs: list[fx.Node]
    labels: list[str]
    free: set = field(default_factory=set)

    def piece(self, first: int, end: int) -> fx.GraphModule:
        """One GraphModule running pieces [first, end): submodules and parameters keep the
        model's qualified names (they are the model's own objects)."""
        nodes = [n for g in self.groups[first:end] for n in g]
        return extract(self.gm, nodes, self.srcs[first], self.outs[end - 1], self.free)

    def modules(self, k: int) -> list[str]:
        """The qualified names of the modules piece k runs (and whose parameters it reads)."""
        names: dict[str, None] = {}
        for n in self.groups[k]:
            for a in [n, *[i for i in n.all_input_nodes if i.op == "get_attr"]]:
                names.update(dict.fromkeys(module_paths(a)))
        return list(names)


def cut(gm: fx.GraphModule, root: nn.Module, key=None, output: str | None = None) -> Cut:
    """Cut `gm` after node i iff node i is the only non-free value defined so far that is
    used later (and, with `key`, the key changes between node i and the next node)."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise PlanError(f"{type(root).__name__}.forward takes {len(inputs)} inputs; a pipeline "
                        "needs exactly one tensor input")
    result = select_output(gm, root, output)
    free = free_nodes(gm)
    if result in free:
        raise PlanError(f"{type(root).__name__}.forward returns a value that does not depend on "
                        "its input or parameters; nothing to pipeline")
    nodes = [n for n in gm.graph.nodes
             if n.op not in ("placeholder", "output", "get_attr") and n not in free]
    order = {n: i for i, n in enumerate(nodes)}
    end = len(nodes)

    def last_use(n):
        return max((order.get(u, end) for u in n.users if u not in free), default=-1)

    uses = {n: last_use(n) for n in nodes}
    in_use = last_use(inputs[0])
    groups, current = [], []
    for i, n in enumerate(nodes):
        current.append(n)
        if i == end - 1:
            groups.append(current)
            break
        live = [m for m in nodes[: i + 1] if uses[m] > i]
        live += [inputs[0]] if in_use > i else []
        if live == [n] and (key is None or key(n) != key(nodes[i + 1])):
            groups.append(current)
            current = []
    srcs = [inputs[0]] + [g[-1] for g in groups[:-1]]
    outs = [g[-1] for g in groups[:-1]] + [result]
    result_cut = Cut(gm, groups, srcs, outs, [], free)
    labels, seen = [], set()
    for k, grp in enumerate(groups):
        if key is not None:
            label = next((k for k in map(key, grp) if k), grp[0].name)
        else:  # the first module it calls, else the module its code is in, else its nodes
            called = [str(n.target) for n in grp if n.op == "call_module"]
            inner = [module_paths(n)[-1] for n in grp if module_paths(n)]
            label = (called or inner or [None])[0] or (
                grp[0].name if len(grp) == 1 else f"{grp[0].name}..{grp[-1].name}")
        label = label.replace(".", "_")
        while label in seen:
            label += "_"
        seen.add(label)
        labels.append(label)
    result_cut.labels = labels
    return result_cut


def extract(gm: fx.GraphModule, group: list[fx.Node], src: fx.Node, out: fx.Node,
            free: set) -> fx.GraphModule:
    """A GraphModule running `group` on the one tensor `src` and returning `out`; free values
    it uses are recomputed (sizes read off its input)."""
    g = fx.Graph()
    env = {src: g.placeholder("x")}

    def arg(a):
        if a in env:
            return env[a]
        if a.op == "get_attr":  # parameters/buffers: shared with gm
            env[a] = g.get_attr(a.target)
        elif symbol(a) is not None:  # a size: read it off the input
            shape = getattr(src.meta.get("val"), "shape", ())
            dims = [d for d, v in enumerate(shape)
                    if isinstance(v, torch.SymInt) and v.node.expr == symbol(a)]
            if not dims:
                raise NoSymbol(a.name)
            env[a] = g.call_function(torch.ops.aten.sym_size.int, (env[src], dims[0]))
        elif a in free:  # recomputed here
            env[a] = g.node_copy(a, arg)
        else:
            raise PlanError(f"internal: piece needs {a.name}, computed in another piece")
        return env[a]

    for n in group:
        env[n] = g.node_copy(n, arg)
    g.output(arg(out))
    return fx.GraphModule(gm, g)
