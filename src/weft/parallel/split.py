"""Cut an unmodified model into pipeline stages at named modules, keeping its own submodules.

    stages = split_model(model, ["blocks.2"])   # two GraphModules: ..blocks.1 | blocks.2..

torch.fx traces the model's forward with every module that is not an ancestor of a split
point as a leaf (called, not traced into), and the graph is cut before each split point's
call. Stage i is a GraphModule holding the model's own submodule objects under their own
dotted names (`tok`, `blocks.0`, ...), so parameter names do not change (checkpoints move
between plans) and tensor parallelism, activation checkpointing and fully_shard apply inside
a stage as in the whole model: a block's forward runs, it is not traced, so nothing about
shapes or head counts is baked in (torch.distributed.pipelining's tracer bakes both).

Values that cross a cut are the stage's outputs and the next stage's inputs (passed through
the stages in between); they must be tensors. A parameter that two stages use (tied weights)
is in both (weft.parallel.tied keeps the copies of ranks running them equal). The model's
forward above the split modules must be traceable by torch.fx (no Python control flow on
tensor values or shapes), or, given an example input, captured by torch.export
(`weft.parallel.exported`: Hugging Face models). Errors are PlanErrors naming
`pipeline.split`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx, nn

from weft.errors import PlanError


def ancestors(split: Sequence[str]) -> set[str]:
    """The root (\"\") and every module above the named ones: what a cut traces through."""
    out = {""}
    for s in split:
        atoms = s.split(".")
        out.update(".".join(atoms[:i]) for i in range(1, len(atoms)))
    return out


def trace(model: nn.Module, split: Sequence[str], example=None) -> tuple[fx.Graph, nn.Module]:
    """(graph, root): the model's forward as an fx graph whose leaves are the modules below
    the cuts, and the module holding the graph's attributes (the model, under torch.fx).
    Where torch.fx fails and `example` (a micro-batch of inputs, or a function returning
    one) is given, torch.export captures it (`weft.parallel.exported`)."""
    inner = ancestors(split)
    for i, s in enumerate(split):
        if s in inner:
            raise PlanError(f"pipeline.split[{i}]: {s!r} contains another split point")

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname not in inner

    try:
        return _Tracer().trace(model), model
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the model's forward
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        why = f"{type(exc).__name__}: {first[:200]}"
    if example is not None:
        from weft.parallel.exported import export_graph

        if callable(example):
            with torch.random.fork_rng():  # making it draws nothing from the caller's stream
                example = example()
        return export_graph(model, split, inner, example)
    raise PlanError(f"pipeline.split: cannot cut {type(model).__name__} at {list(split)}: "
                    f"torch.fx cannot trace its forward ({why}); a pipelined model's forward, "
                    "above the modules it is cut at, must be a traceable chain of module calls "
                    "(no Python control flow on tensor values or shapes), or be given an "
                    "example input (weft.parallelize(example_input=...), a model spec's "
                    "example_input) so that torch.export captures it")


def _stage_of_nodes(graph: fx.Graph, split: Sequence[str]) -> dict[fx.Node, int]:
    index = {s: i + 1 for i, s in enumerate(split)}
    seen: dict[str, fx.Node] = {}
    stage, cur = {}, 0
    for node in graph.nodes:
        if node.op == "call_module" and node.target in index:
            k = index[node.target]
            if node.target in seen:
                raise PlanError(f"pipeline.split[{k - 1}]: {node.target!r} is called more than "
                                "once by forward; cut at a module called once")
            if k != cur + 1:
                raise PlanError(f"pipeline.split[{k - 1}]: forward calls {node.target!r} before "
                                f"{split[cur]!r}; list split points in the order forward calls "
                                "them")
            seen[node.target], cur = node, k
        stage[node] = cur
    for i, s in enumerate(split):
        if s not in seen:
            raise PlanError(f"pipeline.split[{i}]: forward never calls {s!r}, so no stage can "
                            "start there")
    return stage


def split_model(model: nn.Module, split: Sequence[str], example=None) -> list[fx.GraphModule]:
    """len(split) + 1 stage modules; stage i's forward takes stage i-1's outputs.
    `example`: a micro-batch of inputs (or a function returning one), used only where
    torch.fx cannot trace the forward (see `trace`)."""
    split = list(split)
    graph, root = trace(model, split, example)
    stage = _stage_of_nodes(graph, split)
    n = len(split) + 1
    free = _free(graph)  # made from constants alone: made again in each stage using them
    nodes = [nd for nd in graph.nodes if nd.op not in ("get_attr", "output") and nd not in free]
    output = next(nd for nd in graph.nodes if nd.op == "output")
    # live[s]: values made before stage s and used at or after it (stage s's inputs)
    live: list[list[fx.Node]] = [[] for _ in range(n + 1)]
    for s in range(1, n):
        users_from = [nd for nd in graph.nodes if nd.op != "get_attr" and nd not in free
                      and stage[nd] >= s]
        used = set()
        for u in users_from:
            _inputs_through(u, free, used)
        live[s] = [nd for nd in nodes if stage[nd] < s and nd in used]
    modules = []
    for s in range(n):
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for nd in live[s]:
            env[nd] = g.placeholder(nd.name)

        def arg(a, g=g, env=env, s=s):
            if a.op == "get_attr" and a not in env:
                env[a] = g.get_attr(a.target)
            elif a in free and a not in env:
                env[a] = g.node_copy(a, lambda b: arg(b))
            return env[a]
        for nd in nodes:
            if stage[nd] == s and nd not in env:
                env[nd] = g.node_copy(nd, arg)
        spec = _rebuilt(output.args[0], root) if s == n - 1 else None
        if spec is not None:  # the tensors; the loss gets the structure back (pp.py)
            leaves = output.args[0].args[0]
            for v in leaves:
                val = v.meta.get("val") if isinstance(v, fx.Node) else None
                if val is not None and not isinstance(val, torch.Tensor):
                    raise PlanError(f"pipeline.split: {type(model).__name__}'s output holds a "
                                    f"{type(val).__name__} computed in forward ({v.name}), "
                                    "which the last stage cannot send as torch's pipeline "
                                    "sends outputs; return tensors and constants only")
            g.output(tuple(arg(v) for v in leaves if isinstance(v, fx.Node)))
            spec = (spec, {i: v for i, v in enumerate(leaves) if not isinstance(v, fx.Node)})
        elif s == n - 1:
            g.output(fx.node.map_arg(output.args[0], arg))
        else:
            outs = [env[nd] for nd in live[s + 1]]
            g.output(outs[0] if len(outs) == 1 else tuple(outs))
        modules.append(fx.GraphModule(root, g, class_name=f"Stage{s}"))
        modules[-1].output_spec = spec
    return modules


def rebuild_output(output_spec, out):
    """The model's own output from what its last stage returned, given that stage's
    `output_spec` (see `split_model`; None: the output as it is)."""
    import torch.utils._pytree as pytree

    if output_spec is None:
        return out
    spec, consts = output_spec
    tensors = iter(out if isinstance(out, (tuple, list)) else (out,))
    leaves = [consts[i] if i in consts else next(tensors) for i in range(spec.num_leaves)]
    return pytree.tree_unflatten(leaves, spec)


def _rebuilt(ret, root: nn.Module):
    """The pytree spec when the forward's result is a structure torch.export rebuilds from
    tensors (a Hugging Face ModelOutput), which torch's PipelineStage cannot send as is."""
    import torch.utils._pytree as pytree

    if isinstance(ret, fx.Node) and ret.op == "call_function" and \
            ret.target is pytree.tree_unflatten and isinstance(ret.args[1], fx.Node) and \
            ret.args[1].op == "get_attr":
        spec = getattr(root, ret.args[1].target, None)
        if isinstance(spec, pytree.TreeSpec) and not spec.is_leaf():
            return spec
    return None


def _free(graph: fx.Graph) -> set[fx.Node]:
    """Pure function calls on constants and attributes alone (torch.export hoists such as
    `arange(seq)` to the top): made where they are used rather than sent across cuts."""
    free: set[fx.Node] = set()
    for nd in graph.nodes:
        if nd.op == "call_function" and not nd.is_impure() and \
                all(a.op == "get_attr" or a in free for a in nd.all_input_nodes):
            free.add(nd)
    return free


def _inputs_through(node: fx.Node, free: set[fx.Node], out: set[fx.Node]) -> None:
    """The inputs of `node`, looking through the free nodes it uses to theirs."""
    for a in node.all_input_nodes:
        if a in free:
            _inputs_through(a, free, out)
        else:
            out.add(a)


def stage_holder(stages: Sequence[nn.Module]) -> nn.Module:
    """One module holding the given stages' submodules and parameters under the model's own
    names (what a rank running several stages trains, saves and loads)."""
    if len(stages) == 1:
        return stages[0]
    holder = nn.Module()
    for st in stages:
        _merge(holder, st)
    return holder


def _merge(dst: nn.Module, src: nn.Module) -> None:
    for name, p in src._parameters.items():
        if p is not None:
            dst.register_parameter(name, p)
    for name, b in src._buffers.items():
        if b is not None:
            dst.register_buffer(name, b)
    for name, child in src._modules.items():
        have = dst._modules.get(name)
        if have is None and type(child) is nn.Module:  # a container fx made for a dotted path
            have = nn.Module()
            dst.add_module(name, have)
        if have is None:
            dst.add_module(name, child)
        elif have is not child:
            _merge(have, child)
