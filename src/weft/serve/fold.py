"""Serve a member with its batch norms folded into the convolutions before them.

At batch 1 on a CPU a subnet's time is not only its FLOPs: every layer is a call, and a
ResNet's batch norms are a third of its layers. `for_inference` folds each eval-mode
BatchNorm into the conv that feeds it (on an fx-traced copy, with
`torch.nn.utils.fusion.fuse_conv_bn_eval`) and keeps the result only where it gives the
module's own answers (within float tolerance) on a batch of 1 and of 3; otherwise the
module is served as it is, with the reason. Measured on the sensAI benchmark's width-32
ResNet, one thread, median of 300 single inputs, one run: a subnet 1.5-1.8 ms as saved,
1.1-1.2 ms folded; the original 4.7 ms as saved, 2.7 ms folded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn


_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """A copy of `module` (fx-traced) where every eval-mode batch norm that is the only
    reader of a convolution's output is folded into that convolution
    (`torch.nn.utils.fusion.fuse_conv_bn_eval`) and removed from the graph."""
    from torch.fx import symbolic_trace
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    gm = symbolic_trace(copy.deepcopy(module).eval())
    mods = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.args:
            continue
        src = node.args[0]
        if getattr(src, "op", None) != "call_module" or len(src.users) != 1:
            continue
        conv, bn = mods[src.target], mods[node.target]
        if not any(type(conv) is c and type(bn) is b for c, b in _PAIRS) or not bn.track_running_stats:
            continue
        fused = fuse_conv_bn_eval(conv, bn)
        parent, _, name = src.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, fused)
        mods[src.target] = fused
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def for_inference(module: nn.Module, input_shape: Sequence[int],
                  device: torch.device | str = "cpu") -> tuple[nn.Module, str | None]:
    """(the module to serve, None), or (the module itself, why it was not folded)."""
    module = module.eval()
    g = torch.Generator().manual_seed(0)
    probes = [torch.randn(n, *input_shape, generator=g).to(device) for n in (1, 3)]
    try:
        with torch.no_grad():
            folded = fold_batch_norms(module)
            for x in probes:
                want, got = module(x), folded(x)
                if not (isinstance(got, torch.Tensor) and got.shape == want.shape
                        and torch.allclose(got, want, rtol=1e-4, atol=1e-5)):
                    return module, f"the folded module's answer differs at batch {len(x)}"
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: serve it as it is
        return module, f"not traceable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    return folded, None
