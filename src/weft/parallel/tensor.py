"""Tensor parallelism from plan rules: fnmatch patterns -> torch ParallelStyles on the tp mesh.

Styles: colwise (ColwiseParallel), rowwise (RowwiseParallel), sequence_parallel
(SequenceParallel), prepare_input (PrepareModuleInput), replicate (parameters become
Replicate DTensors; inputs and outputs stay plain tensors). A rule's `divide` lists
integer attributes divided by the tp degree, e.g. an attention's `n_head`, so a forward
written for the whole model runs on its share of the heads.
"""

from __future__ import annotations

from torch import nn

from weft.plan.check import matching, tp_styles
from weft.plan.format import Plan, TPRule


def placement(layout: str):
    from torch.distributed.tensor import Replicate, Shard

    if layout == "replicate":
        return Replicate()
    return Shard(int(layout[len("shard("):-1]))


def _placements(layouts):
    return None if layouts is None else tuple(placement(x) for x in layouts)


def style_for(rule: TPRule, module: nn.Module | None = None):
    """The torch ParallelStyle of one rule (options left unset keep torch's defaults, except
    that a row-wise nn.Embedding takes its token ids replicated: it splits the vocabulary)."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    kw = {}
    if rule.use_local_output is not None:
        kw["use_local_output"] = rule.use_local_output
    if rule.style in ("colwise", "rowwise"):
        if rule.input_layouts is not None:
            kw["input_layouts"] = placement(rule.input_layouts[0])
        elif rule.style == "rowwise" and isinstance(module, nn.Embedding):
            kw["input_layouts"] = placement("replicate")
        if rule.output_layouts is not None:
            kw["output_layouts"] = placement(rule.output_layouts[0])
        return (ColwiseParallel if rule.style == "colwise" else RowwiseParallel)(**kw)
    if rule.style == "sequence_parallel":
        if rule.sequence_dim is not None:
            kw["sequence_dim"] = rule.sequence_dim
        return SequenceParallel(**kw)
    if rule.style == "prepare_input":
        return PrepareModuleInput(input_layouts=_placements(rule.input_layouts),
                                  desired_input_layouts=_placements(rule.desired_input_layouts),
                                  **kw)
    if rule.style == "replicate":
        return ReplicateParallel(**kw)
    raise ValueError(f"no ParallelStyle for style {rule.style!r}")


def _replicate_style():
    from torch.distributed.tensor import (
        DTensor,
        Replicate,
        distribute_module,
        distribute_tensor,
    )
    from torch.distributed.tensor.parallel import ParallelStyle

    class _ReplicateParallel(ParallelStyle):
        """Parameters as Replicate DTensors (rank 0's values); plain tensors in, and out
        unless use_local_output=False (then a Replicate DTensor, e.g. to add to a
        sequence-sharded activation)."""

        def __init__(self, use_local_output: bool = True):
            super().__init__()
            self.use_local_output = use_local_output

        def _apply(self, module: nn.Module, mesh) -> nn.Module:
            def params(name, mod, mesh):
                for pname, p in list(mod.named_parameters(recurse=False)):
                    mod.register_parameter(pname, nn.Parameter(
                        distribute_tensor(p.data, mesh, [Replicate()]), p.requires_grad))

            def inputs(mod, args, mesh):
                return tuple(DTensor.from_local(a, mesh, [Replicate()], run_check=False)
                             if not isinstance(a, DTensor) and hasattr(a, "dim") else a
                             for a in args)

            def outputs(mod, out, mesh):
                local = self.use_local_output and isinstance(out, DTensor)
                return out.to_local() if local else out

            return distribute_module(module, mesh, params, inputs, outputs)

    return _ReplicateParallel


def ReplicateParallel(use_local_output: bool = True):
    return _replicate_style()(use_local_output=use_local_output)


def apply_tensor_parallel(model: nn.Module, plan: Plan, tp_mesh, strict: bool = True) -> nn.Module:
    """Divide the rules' attributes, then parallelize each matched module with its style
    (`strict=False`: rules matching nothing are skipped, for one pipeline stage)."""
    from torch.distributed.tensor.parallel import parallelize_module

    tp = plan.mesh.tp
    modules = dict(model.named_modules())
    for rule in plan.tensor_parallel:
        for name in matching(rule.module, model):
            for attr in rule.divide:
                setattr(modules[name], attr, getattr(modules[name], attr) // tp)
    styles = tp_styles(plan, model, strict)
    # Outer modules first: a prepare_input on a block wraps the block, its children keep theirs.
    for name in sorted(styles, key=lambda n: n.count(".")):
        parallelize_module(modules[name], tp_mesh, style_for(styles[name][1], modules[name]))
    return model


__all__ = ["ReplicateParallel", "apply_tensor_parallel", "placement", "style_for"]
