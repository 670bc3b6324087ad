"""Channel dependency groups of a classifier, found over its torch.fx graph.

Channels that must be removed together form a group: the output channels of a conv or linear
layer, carried unchanged through batch norm, activations, pooling, dropout and depthwise convs,
merged with every tensor they are added to (a residual connection), and read by the next
conv/linear layers (through a flatten, one channel becomes H*W features). Pruning a group removes
the same channels from its producers, its per-channel layers and its consumers' inputs.

Supported (dim 1 is the channel dim of 2-D and 4-D tensors): nn.Conv2d (groups 1, or depthwise),
nn.Linear on (N, F), nn.BatchNorm1d/2d, ReLU-family and other elementwise activations, dropout,
identity, max/avg/adaptive pooling, flatten/view/reshape to (N, C*H*W), add or multiply of two
same-shaped tensors (merged groups) or a tensor and a number. The model's output must come
straight from an nn.Linear (the classifier head). Anything else raises UnsupportedModelError
naming the node, or, with `on_unsupported="freeze"`, keeps every channel it touches.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from weft.serve.errors import UnsupportedModelError

_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_PASS_MODULES = _RELU_MODULES + (
    nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.ELU, nn.Dropout,
    nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d)
_RELU_FUNCTIONS = {F.relu, torch.relu, F.relu6, torch.relu_}
_PASS_FUNCTIONS = _RELU_FUNCTIONS | {
    F.gelu, F.silu, F.leaky_relu, F.hardswish, F.elu, torch.sigmoid, torch.tanh, F.dropout,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_RELU_METHODS = {"relu", "relu_"}
_PASS_METHODS = _RELU_METHODS | {"sigmoid", "tanh", "contiguous", "clone"}
_MERGE_FUNCTIONS = {operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul}
_SCALAR_FUNCTIONS = _MERGE_FUNCTIONS | {operator.sub, operator.truediv}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
SUPPORTED = ("Conv2d (groups=1 or depthwise), Linear on (N, F), BatchNorm1d/2d, activations, dropout, "
             "pooling, flatten/view/reshape to (N, C*H*W), add/mul of same-shaped tensors or by a number")


@dataclass
class ChannelGroup:
    """Channels removed together. Module names refer to the traced GraphModule."""

    id: int
    size: int
    producers: list[str] = field(default_factory=list)   # Conv2d/Linear whose outputs these are
    per_channel: list[str] = field(default_factory=list)  # BatchNorm, depthwise Conv2d
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (Conv2d/Linear, features per channel)
    points: list[str] = field(default_factory=list)      # fx nodes (ReLU outputs) to measure
    frozen: str | None = None                            # why it cannot be pruned

    @property
    def prunable(self) -> bool:
        return self.frozen is None


@dataclass
class ChannelGraph:
    gm: torch.fx.GraphModule
    input_shape: tuple[int, ...]        # one input, without the batch dim
    groups: dict[int, ChannelGroup]
    head: str                           # the classifier nn.Linear
    num_classes: int
    unsupported: list[str] = field(default_factory=list)  # nodes frozen under on_unsupported="freeze"

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups.values() if g.prunable]

    def point_groups(self) -> dict[str, int]:
        """fx node name -> group id, for every measured activation."""
        return {p: g.id for g in self.prunable() for p in g.points}


def trace(model: nn.Module) -> torch.fx.GraphModule:
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected an nn.Module, got {type(model).__name__}")
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable control flow
        raise UnsupportedModelError(
            f"{type(model).__name__} cannot be traced with torch.fx ({type(exc).__name__}: {exc}); "
            "decomposition needs a model without data-dependent control flow") from exc


def analyze(model: nn.Module, input_shape: tuple[int, ...], on_unsupported: str = "error") -> ChannelGraph:
    """Trace `model` and group its channels; `input_shape` is one input without the batch dim."""
    if on_unsupported not in ("error", "freeze"):
        raise ValueError(f"on_unsupported={on_unsupported!r}: expected 'error' or 'freeze'")
    gm = trace(model)
    gm.eval()
    try:
        ShapeProp(gm).propagate(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise UnsupportedModelError(
            f"{type(model).__name__} fails on an input of shape (2, {', '.join(map(str, input_shape))}): "
            f"{type(exc).__name__}: {exc}") from exc
    return _Analyzer(gm, tuple(input_shape), on_unsupported).run()


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Analyzer:
    def __init__(self, gm: torch.fx.GraphModule, input_shape, on_unsupported: str):
        self.gm, self.input_shape, self.mode = gm, input_shape, on_unsupported
        self.modules = dict(gm.named_modules())
        self.parent: dict[int, int] = {}
        self.info: dict[int, ChannelGroup] = {}
        self.space: dict[str, tuple[int, int]] = {}  # node name -> (group, features per channel)
        self.calls: dict[str, int] = {}
        self.unsupported: list[str] = []

    # union-find over group ids
    def new(self, size: int, frozen: str | None = None) -> int:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.info[gid] = ChannelGroup(gid, size, frozen=frozen)
        return gid

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            ga, gb = self.info[a], self.info[b]
            for f in ("producers", "per_channel", "consumers", "points"):
                getattr(ga, f).extend(getattr(gb, f))
            ga.frozen = ga.frozen or gb.frozen
        return a

    def freeze(self, g: int, reason: str) -> None:
        info = self.info[self.find(g)]
        info.frozen = info.frozen or reason

    def run(self) -> ChannelGraph:
        out_node = next(n for n in self.gm.graph.nodes if n.op == "output")
        head, k = self.output(out_node)
        for node in self.gm.graph.nodes:
            meta = node.meta.get("tensor_meta")
            if node.op == "output":
                self.freeze(self.space[node.args[0].name][0], "classifier output")
            elif meta is not None and not hasattr(meta, "shape"):
                self.bad(node, "returns several tensors")
            elif meta is not None:
                self.visit(node)
        for name, n in self.calls.items():
            if n > 1:
                raise UnsupportedModelError(
                    f"module {name!r} ({type(self.modules[name]).__name__}) is called {n} times; "
                    "a layer with shared weights cannot be pruned per call")
        groups: dict[int, ChannelGroup] = {}
        for gid in self.parent:
            if self.find(gid) == gid:
                g = self.info[gid]
                if g.frozen is None and not g.points:
                    g.frozen = "no ReLU output to measure"
                if g.frozen is None and not g.consumers:
                    g.frozen = "no layer reads these channels"
                groups[gid] = g
        return ChannelGraph(self.gm, self.input_shape, groups, head, k, self.unsupported)

    def output(self, node) -> tuple[str, int]:
        (out,) = node.args
        if not isinstance(out, torch.fx.Node):
            raise UnsupportedModelError(f"not a classifier: the model returns {type(out).__name__}, "
                                        "expected one (N, classes) tensor of logits")
        shape = _shape(out)
        mod = self.modules.get(out.target) if out.op == "call_module" else None
        if shape is None or len(shape) != 2 or shape[1] < 2:
            raise UnsupportedModelError(f"not a classifier: output node {out.name!r} has shape "
                                        f"{shape and tuple(shape)}, expected (N, classes) with classes >= 2")
        if not isinstance(mod, nn.Linear):
            what = f"{out.op} {getattr(out.target, '__name__', out.target)}"
            raise UnsupportedModelError(f"not a classifier with a linear head: output node {out.name!r} "
                                        f"is {what}, expected an nn.Linear")
        return out.target, shape[1]

    def tensor_inputs(self, node) -> list:
        return [a for a in node.all_input_nodes if _shape(a) is not None]

    def same(self, node, src, relu: bool = False) -> None:
        g, rep = self.space[src.name]
        self.space[node.name] = (g, rep)
        if relu and rep == 1:
            self.info[self.find(g)].points.append(node.name)

    def bad(self, node, why: str) -> None:
        target = getattr(node.target, "__name__", node.target)
        if self.mode == "error":
            raise UnsupportedModelError(
                f"node {node.name!r} ({node.op} {target}) {why}; channel pruning supports {SUPPORTED} "
                "(pass on_unsupported='freeze' to keep the channels it touches)")
        self.unsupported.append(f"{node.name} ({node.op} {target}): {why}")
        for a in self.tensor_inputs(node):
            self.freeze(self.space[a.name][0], f"read by unsupported node {node.name!r}")
        shape = _shape(node)
        if shape is not None:
            size = shape[1] if len(shape) > 1 else 1
            self.space[node.name] = (self.new(size, f"made by unsupported node {node.name!r}"), 1)

    def visit(self, node) -> None:
        shape = _shape(node)
        ins = self.tensor_inputs(node)
        if node.op == "placeholder":
            self.space[node.name] = (self.new(shape[1] if len(shape) > 1 else 1, "model input"), 1)
        elif node.op == "get_attr":
            self.space[node.name] = (self.new(shape[1] if len(shape) > 1 else 1, "a stored tensor"), 1)
        elif len(shape) not in (2, 4) or any(len(_shape(a)) not in (2, 4) for a in ins):
            self.bad(node, f"has a tensor of rank other than 2 or 4 ({shape})")
        elif node.op == "call_module":
            self.module(node, self.modules[node.target], ins)
        elif node.op == "call_function":
            self.function(node, ins)
        elif node.op == "call_method":
            self.method(node, ins)
        else:
            self.bad(node, "is not supported")

    def module(self, node, mod, ins) -> None:
        name = node.target
        if len(ins) != 1:
            return self.bad(node, f"takes {len(ins)} tensors")
        src = ins[0]
        g, rep = self.space[src.name]
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
            self.calls[name] = self.calls.get(name, 0) + 1
        if isinstance(mod, nn.Conv2d):
            if mod.groups == 1:
                self.info[self.find(g)].consumers.append((name, rep))
                self.space[node.name] = (self.new(mod.out_channels), 1)
                self.info[self.space[node.name][0]].producers.append(name)
            elif mod.groups == mod.in_channels == mod.out_channels:
                self.info[self.find(g)].per_channel.append(name)
                self.same(node, src)
            else:
                self.bad(node, f"is a grouped convolution (groups={mod.groups})")
        elif isinstance(mod, nn.Linear):
            if len(_shape(src)) != 2:
                return self.bad(node, "applies a Linear to a tensor that is not (N, features)")
            self.info[self.find(g)].consumers.append((name, rep))
            self.space[node.name] = (self.new(mod.out_features), 1)
            self.info[self.space[node.name][0]].producers.append(name)
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if rep != 1:
                return self.bad(node, "normalizes flattened features")
            self.info[self.find(g)].per_channel.append(name)
            self.same(node, src)
        elif isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                return self.bad(node, f"flattens dims {mod.start_dim}..{mod.end_dim}, not 1..-1")
            self.flatten(node, src)
        elif isinstance(mod, _PASS_MODULES):
            self.same(node, src, relu=isinstance(mod, _RELU_MODULES))
        else:
            self.bad(node, f"is a {type(mod).__name__}")

    def flatten(self, node, src) -> None:
        s_in, s_out = _shape(src), _shape(node)
        g, rep = self.space[src.name]
        if len(s_in) == 2 and s_out == s_in:
            self.same(node, src)
        elif len(s_in) == 4 and s_out == (s_in[0], s_in[1] * s_in[2] * s_in[3]):
            self.space[node.name] = (g, rep * s_in[2] * s_in[3])
        else:
            self.bad(node, f"reshapes {s_in} to {s_out}, not to (N, C*H*W)")

    def function(self, node, ins) -> None:
        f = node.target
        if f is torch.flatten and len(ins) == 1:
            dims = list(node.args[1:]) + [node.kwargs.get(k) for k in ("start_dim", "end_dim") if k in node.kwargs]
            if dims[:1] != [1] or dims[1:] not in ([], [-1]):
                return self.bad(node, f"flattens with arguments {dims}, not start_dim=1")
            return self.flatten(node, ins[0])
        if f in _PASS_FUNCTIONS and len(ins) == 1 and node.args and node.args[0] is ins[0]:
            return self.same(node, ins[0], relu=f in _RELU_FUNCTIONS)
        if f in _SCALAR_FUNCTIONS and len(ins) == 1 and len(node.args) == 2 and not node.kwargs \
                and all(isinstance(a, (int, float)) or a is ins[0] for a in node.args):
            if f in (operator.sub, operator.truediv) and node.args[0] is not ins[0]:
                return self.bad(node, "divides or subtracts a tensor from a number")
            return self.same(node, ins[0])
        if f in _MERGE_FUNCTIONS and len(ins) == 2 and len(node.args) == 2 and not node.kwargs:
            a, b = ins
            if _shape(a) != _shape(b) or self.space[a.name][1] != self.space[b.name][1]:
                return self.bad(node, f"combines tensors of shapes {_shape(a)} and {_shape(b)}")
            g = self.union(self.space[a.name][0], self.space[b.name][0])
            self.space[node.name] = (g, self.space[a.name][1])
            return None
        return self.bad(node, "is not supported")

    def method(self, node, ins) -> None:
        if len(ins) != 1 or node.args[0] is not ins[0]:
            return self.bad(node, "is not supported")
        if node.target in _FLATTEN_METHODS:
            if node.target != "flatten" and (len(node.args) != 3 or node.args[2] != -1):
                return self.bad(node, "reshapes to a size written in the model, not (N, -1)")
            if node.target == "flatten" and list(node.args[1:]) not in ([1], [1, -1]):
                return self.bad(node, f"flattens with arguments {list(node.args[1:])}, not start_dim=1")
            return self.flatten(node, ins[0])
        if node.target in _PASS_METHODS and len(node.args) == 1:
            return self.same(node, ins[0], relu=node.target in _RELU_METHODS)
        return self.bad(node, "is not supported")
