"""Megatron-style tensor-parallel rules found in a model's structure (for `weft plan auto`).

    rules = megatron_rules(gpt.model())    # ({module: "blocks.*.attn.[qkv]", ...}, ...)
    rules = megatron_rules(model, example=tokens, dropped=why)   # tried on 2 emulated ranks

Attention: a module with an integer head count (``n_head``, ``n_heads``, ``num_heads``)
and `nn.Linear` children for the query, key and value (``q``/``k``/``v``, ``query``/...,
or one fused ``qkv``/``c_attn``) and an output projection (``proj``, ``o``, ``out_proj``,
``c_proj``, ``o_proj``): the inputs column-wise, the output row-wise, the head count
divided. Feed-forward: a module whose only `nn.Linear` children are two (or three, gated)
chained ones (``fc``/``c_fc``/``up``/``w1``/``gate`` ... then ``proj``/``c_proj``/``down``/
``w2``): column-wise, then row-wise. Numbered path atoms become ``*``, so one rule covers
every block. Rules must pass `weft.plan.check` at tp 2; a model with none gets tp 1 only.

Names do not say what a forward does with its share: a fused ``qkv`` split into equal
thirds, or a view by a head count the rule does not divide, computes something else on
each rank. Given an example batch (as `weft plan auto` has), each group of rules is tried
on 2 ranks emulated in this process and kept only if every rank's result is the whole
module's (`weft.planner.tp_emulate`); only then is an attention with a ``head_dim`` and no
head count (its forward reshapes with -1, as Hugging Face's Llama) taken as well.
"""

from __future__ import annotations

from torch import nn

from weft.errors import PlanError
from weft.plan.check import check
from weft.plan.format import Mesh, Plan, TPRule

HEADS = ("n_head", "n_heads", "num_heads", "num_attention_heads")
INPUTS = ("q", "k", "v", "query", "key", "value", "qkv", "c_attn", "q_proj", "k_proj", "v_proj",
          "wq", "wk", "wv")
OUTPUTS = ("proj", "o", "out_proj", "c_proj", "o_proj", "wo", "dense")
UP = ("fc", "c_fc", "up", "up_proj", "w1", "w3", "gate", "gate_proj", "fc1", "dense_h_to_4h")
DOWN = ("proj", "c_proj", "down", "down_proj", "w2", "fc2", "dense_4h_to_h")


# What `megatron_rules` finds in examples/gpt.py (a plan for the analytic `transformer`
# workload is written with these: its layers are named as that model's).
GPT_RULES = (TPRule("blocks.*.attn.q", "colwise"), TPRule("blocks.*.attn.k", "colwise"),
             TPRule("blocks.*.attn.v", "colwise"), TPRule("blocks.*.attn.proj", "rowwise"),
             TPRule("blocks.*.attn", divide=("n_head",)), TPRule("blocks.*.mlp.fc", "colwise"),
             TPRule("blocks.*.mlp.proj", "rowwise"))


def _pattern(name: str) -> str:
    return ".".join("*" if a.isdigit() else a for a in name.split("."))


def _linears(mod: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in mod.named_children() if isinstance(m, nn.Linear)}


def _groups(model: nn.Module, head_dim_only: bool) -> dict[str, tuple[TPRule, ...]]:
    """{module pattern: its rules} for every attention and feed-forward found by name."""
    groups: dict[str, tuple[TPRule, ...]] = {}
    for name, mod in model.named_modules():
        if not name:
            continue
        base = _pattern(name)
        if base in groups:
            continue
        lin = _linears(mod)
        heads = next((h for h in HEADS if isinstance(getattr(mod, h, None), int)), None)
        ins = [n for n in lin if n in INPUTS]
        outs = [n for n in lin if n in OUTPUTS]
        attention = heads or (head_dim_only and isinstance(getattr(mod, "head_dim", None), int))
        if attention and ins and len(outs) == 1:
            groups[base] = (*(TPRule(f"{base}.{n}", "colwise") for n in ins),
                            TPRule(f"{base}.{outs[0]}", "rowwise"),
                            *((TPRule(base, divide=(heads,)),) if heads else ()))
            continue
        ups = [n for n in lin if n in UP]
        downs = [n for n in lin if n in DOWN]
        if not attention and ups and len(downs) == 1 and len(lin) == len(ups) + 1 and \
                all(lin[u].out_features == lin[downs[0]].in_features for u in ups):
            groups[base] = (*(TPRule(f"{base}.{u}", "colwise") for u in ups),
                            TPRule(f"{base}.{downs[0]}", "rowwise"))
    return groups


def megatron_rules(model: nn.Module, example=None,
                   dropped: dict[str, str] | None = None) -> tuple[TPRule, ...]:
    """The rules found in `model`. With `example` (one input batch, a tuple for several
    arguments), every group is first tried as 2 ranks would run it, in this process
    (`weft.planner.tp_emulate`), and only groups that compute the whole module's result are
    kept (their reasons go to `dropped`); an attention with a ``head_dim`` but no head
    count (a forward that reshapes with -1, as Hugging Face's Llama) is found only then."""
    groups = _groups(model, head_dim_only=example is not None)
    if example is not None and groups:
        from weft.planner.tp_emulate import emulate

        bad = emulate(model, groups, example, tp=2)
        if dropped is not None:
            dropped.update(bad)
        groups = {g: r for g, r in groups.items() if g not in bad}
    out = tuple(r for rules in groups.values() for r in rules)
    if not out:
        return ()
    try:
        check(Plan(mesh=Mesh(tp=2), tensor_parallel=out), model, 2)
    except PlanError as e:
        if dropped is not None:
            dropped["*"] = str(e)
        return ()
    return out
