"""Megatron-style tensor-parallel rules found in a model's structure (for `weft plan auto`).

    rules = megatron_rules(gpt.model())    # ({module: "blocks.*.attn.[qkv]", ...}, ...)

Attention: a module with an integer head count (``n_head``, ``n_heads``, ``num_heads``)
and `nn.Linear` children for the query, key and value (``q``/``k``/``v``, ``query``/...,
or one fused ``qkv``/``c_attn``) and an output projection (``proj``, ``o``, ``out_proj``,
``c_proj``, ``o_proj``): the inputs column-wise, the output row-wise, the head count
divided. Feed-forward: a module whose only `nn.Linear` children are two (or three, gated)
chained ones (``fc``/``c_fc``/``up``/``w1``/``gate`` ... then ``proj``/``c_proj``/``down``/
``w2``): column-wise, then row-wise. Numbered path atoms become ``*``, so one rule covers
every block. Rules must pass `weft.plan.check` at tp 2; a model with none gets tp 1 only.
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


def megatron_rules(model: nn.Module) -> tuple[TPRule, ...]:
    rules: dict[tuple, TPRule] = {}

    def add(rule: TPRule):
        rules.setdefault((rule.module, rule.style, rule.divide), rule)

    for name, mod in model.named_modules():
        if not name:
            continue
        lin = _linears(mod)
        heads = next((h for h in HEADS if isinstance(getattr(mod, h, None), int)), None)
        ins = [n for n in lin if n in INPUTS]
        outs = [n for n in lin if n in OUTPUTS]
        base = _pattern(name)
        if heads and ins and len(outs) == 1:
            for n in ins:
                add(TPRule(f"{base}.{n}", "colwise"))
            add(TPRule(f"{base}.{outs[0]}", "rowwise"))
            add(TPRule(base, divide=(heads,)))
            continue
        ups = [n for n in lin if n in UP]
        downs = [n for n in lin if n in DOWN]
        if not heads and ups and len(downs) == 1 and len(lin) == len(ups) + 1 and \
                all(lin[u].out_features == lin[downs[0]].in_features for u in ups):
            for u in ups:
                add(TPRule(f"{base}.{u}", "colwise"))
            add(TPRule(f"{base}.{downs[0]}", "rowwise"))
    out = tuple(rules.values())
    if not out:
        return ()
    try:
        check(Plan(mesh=Mesh(tp=2), tensor_parallel=out), model, 2)
    except PlanError:
        return ()
    return out
