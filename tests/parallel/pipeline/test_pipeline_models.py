"""Models people train, pipelined on real gloo ranks: a ResNet with in-place ReLUs, batch norm
and ``out += identity`` (a stage that starts with an in-place op), and a GPT whose token
embedding is tied to its output head across stages. Training equals single-process
gradient accumulation; the tied copies stay bit-identical."""

from pathlib import Path

import torch

from weft.launch import launch
from weft.model_spec import load_module
from weft.parallel.pipeline.runtime import Pipeline

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
STEPS, M, BATCH = 2, 4, 8


def _example(name):
    return load_module(str(EXAMPLES / f"{name}.py"))[0]


def resnet():
    return _example("resnet").model(width=4, blocks=(1, 1))


def gpt():
    model = _example("gpt").model(n_layer=2, d_model=16, n_head=2, block=8)
    model.head.weight = model.tok.weight  # tied, as GPT-2's wte / lm_head
    return model


def batches(kind):
    g = torch.Generator().manual_seed(1)
    if kind == "resnet":
        return [(torch.randn(BATCH, 1, 8, 8, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
                for _ in range(STEPS)]
    return [(torch.randint(0, 128, (BATCH, 8), generator=g),
             torch.randint(0, 128, (BATCH, 8), generator=g)) for _ in range(STEPS)]


def opt(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def loss_of(kind):
    return _example(kind).loss_fn


def reference(kind):
    """Single process: the same micro-batches, gradients accumulated, one step per batch."""
    model = resnet() if kind == "resnet" else gpt()
    o, loss_fn = opt(list(model.parameters())), loss_of(kind)
    for x, y in batches(kind):
        for xm, ym in zip(x.chunk(M), y.chunk(M)):
            (loss_fn(model(xm), ym) / M).backward()
        o.step()
        o.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(kind, split_points, stage_ranks, schedule):
    """Train on this rank: `split_points` with `stage_ranks`, or a plan (a dict)."""
    from weft.parallel.pipeline import PipelinePlan

    model = resnet() if kind == "resnet" else gpt()
    if isinstance(split_points, dict):
        pipe = Pipeline.from_plan(model, PipelinePlan.from_dict(split_points), loss_of(kind),
                                  schedule, optimizer=opt)
    else:
        pipe = Pipeline(model, split_points, stage_ranks, loss_of(kind), schedule, M,
                        optimizer=opt)
    tied = []
    for x, y in batches(kind):
        pipe.step(x, y)
        if kind == "gpt" and pipe.params and any(p is model.tok.weight for p in pipe.params):
            tied.append(model.tok.weight.detach().clone())
    mine = {id(p) for p in pipe.params} | {id(b) for c in pipe.my_chunks
                                           for b in pipe.modules[c].buffers()}
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()
             if id(v) in mine}
    return {"state": state, "tied": tied, "shared": [e["names"] for e in pipe.shared.entries]}


def check(results, ref, atol=1e-5):
    merged = {}
    for r in results:
        merged.update(r["state"])
    assert sorted(merged) == sorted(k for k in ref if not k.endswith("head.weight")) or \
        sorted(merged) == sorted(ref)
    for k, v in merged.items():
        assert torch.allclose(v.float(), ref[k].float(), atol=atol, rtol=0), k


def test_resnet_in_place_relus_batch_norm_pipelined_equals_single_process():
    # stage 1 starts at the stem's ReLU(inplace=True): its input is the received activation
    results = launch(run, 3, args=("resnet", ["relu", "layer2.0"], [[0], [1], [2]], "1f1b"),
                     timeout=60)
    check(results, reference("resnet"))  # parameters and batch-norm running statistics


def test_tied_embedding_across_stages_stays_bit_identical_and_equals_single_process():
    from weft.planner import from_split_points, profile_model
    from weft.topology.builders import ring

    # planned: tok (stage 0, replicated twice) and head (stage 2) share one weight
    prof = profile_model(gpt(), torch.randint(0, 128, (BATCH // M, 8)), repeats=1,
                         use_cache=False)
    assert [e["names"] for e in prof.shared] == [["tok.weight", "head.weight"]]
    plan = from_split_points(prof, ring(4), ["blocks.0", "ln_f"], micro_batch=BATCH // M,
                             microbatches=M, replicas=[2, 1, 1])
    results = launch(run, 4, args=("gpt", plan.to_dict(), None, "1f1b"), timeout=60)
    assert results[0]["shared"] == [["tok.weight", "head.weight"]]
    copies = [r["tied"] for r in results if r["tied"]]
    assert len(copies) == 3  # ranks 0, 1 (tok) and 3 (head)
    for step in range(STEPS):
        assert all(torch.equal(c[step], copies[0][step]) for c in copies)
    assert not torch.equal(copies[0][0], copies[0][1])  # it did train
    check(results, reference("gpt"))
