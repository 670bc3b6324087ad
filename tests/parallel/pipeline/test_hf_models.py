"""Hugging Face GPT-2 and BERT built from small configs (no weights downloaded), planned
across 4 stages at block boundaries, trained 1F1B on 4 gloo ranks: equal to single-process
training (1e-5), the tied embedding kept equal across the first and last stage."""

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded (ranks inherit it)
transformers = pytest.importorskip("transformers")

from weft.launch import launch  # noqa: E402
from weft.parallel.pipeline.runtime import Pipeline  # noqa: E402

STEPS, M, BATCH, T, VOCAB = 2, 4, 8, 8, 64
KINDS = ("gpt2", "bert")


def build(kind):
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=T, n_embd=16, n_layer=4,
                                      n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, use_cache=False)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=4,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=T, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    return transformers.BertForMaskedLM(cfg)


def loss_fn(logits, targets):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def data():
    g = torch.Generator().manual_seed(3)
    return [(torch.randint(0, VOCAB, (BATCH, T), generator=g),
             torch.randint(0, VOCAB, (BATCH, T), generator=g)) for _ in range(STEPS)]


def opt(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def plan_for(kind):
    """4 stages of (about) equal blocks, planned from a profile of the model."""
    from weft.planner import equal_blocks, profile_model
    from weft.topology.builders import ring

    prof = profile_model(build(kind), torch.randint(0, VOCAB, (BATCH // M, T)), repeats=1,
                         use_cache=False)
    return equal_blocks(prof, ring(4), 4, micro_batch=BATCH // M, microbatches=M)


def run(kind, plan_dict):
    from weft.parallel.pipeline import PipelinePlan

    model = build(kind)
    names = {id(p): n for n, p in model.named_parameters()}
    pipe = Pipeline.from_plan(model, PipelinePlan.from_dict(plan_dict), loss_fn, "1f1b",
                              optimizer=opt, example_input=torch.randint(0, VOCAB, (2, T)))
    for x, y in data():
        pipe.step(x, y)
    return {"params": {names[id(p)]: p.detach().clone() for p in pipe.params},
            "shared": [e["stages"] for e in pipe.shared.entries]}


def run_both(plans):
    """Both models in one world: each rank imports transformers once (seconds of CPU)."""
    return {kind: run(kind, plan) for kind, plan in plans.items()}


@pytest.fixture(scope="module")
def pipelined():
    plans = {kind: plan_for(kind) for kind in KINDS}
    results = launch(run_both, 4, args=({k: p.to_dict() for k, p in plans.items()},), timeout=120)
    return plans, results


def reference(kind):
    model = build(kind)
    o = opt(list(model.parameters()))
    for x, y in data():
        for xm, ym in zip(x.chunk(M), y.chunk(M)):
            (loss_fn(model(xm).logits, ym) / M).backward()
        o.step()
        o.zero_grad()
    return dict(model.named_parameters())


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_hugging_face_model_pipelined_at_block_boundaries_equals_single_process(kind, pipelined):
    plans, both = pipelined
    plan, results = plans[kind], [r[kind] for r in both]
    blocks = plan.split_points
    prefix = "transformer.h." if kind == "gpt2" else "bert.encoder.layer."
    assert blocks == [f"{prefix}{i}" for i in (1, 2, 3)] and plan.num_stages == 4
    assert results[0]["shared"] == [[0, 3]]  # the tied word embedding / output projection
    ref = reference(kind)
    held: dict[str, list] = {}
    for r in results:
        for name, p in r["params"].items():
            held.setdefault(name, []).append(p)
    assert sorted(held) == sorted(ref)
    for name, copies in held.items():
        assert all(torch.equal(c, copies[0]) for c in copies), name  # copies bit-identical
        assert torch.allclose(copies[0], ref[name].detach(), atol=1e-5, rtol=0), name
    tied = [n for n, c in held.items() if len(c) == 2]
    assert len(tied) == 1
