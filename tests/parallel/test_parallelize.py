"""weft.parallelize: every plan trains the GPT example (and the digits CNN) to the parameters a
single process reaches on the same global batches; checkpoints move between plans.

One world of 4 gloo ranks runs every case in turn (process start-up is the slow part);
the reference runs the same `train` function in this process with the one-rank plan.
"""

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import weft
from weft.errors import PlanError
from tests._close import assert_params_close
from weft.launch import launch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PLANS = EXAMPLES / "plans"
sys.path.insert(0, str(EXAMPLES))
import gpt
import train_gpt

# One world runs ~40 cases: about two minutes on a quiet 2-core machine, over five at a
# load average of 30 (other jobs), so the tests that share it get a longer bound.
pytestmark = pytest.mark.timeout(900)

STEPS, BATCH, LR, WORLD = 3, 8, 1e-2, 4
TOL = 1e-4  # relative: ||p - p_ref|| / ||p_ref|| per parameter tensor (tests/_close.py)
BF16 = {"mixed_precision": {"param_dtype": "bfloat16", "reduce_dtype": "float32"}}
OUTPUT_DTYPES = {}  # plan name -> dtype of the model's output in the last step
LOCAL_SHAPES = {}  # "last" -> {parameter name: shape this rank holds} of the last parallelize
COORDS = {}  # "last" -> this rank's mesh coordinate (pp, dp_replicate, dp_shard, tp)
COMM_DEVICES = {}  # "last" -> the devices of weft's data-parallel communicator, if any


def _plan(file, **over):
    """An example plan (examples/plans/<file>.yaml) as data, top-level sections updated."""
    import weft.plan as wp

    data = wp.to_dict(wp.load(PLANS / f"{file}.yaml"))
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


HAVE_HF = importlib.util.find_spec("transformers") is not None


def tied_gpt():
    """The GPT example with its head tied to its token embedding, as GPT-2's lm_head is."""
    model = gpt.model(n_layer=2)
    model.head.weight = model.tok.weight
    return model


def _task(name):
    if name == "gpt":
        train_set, _ = gpt.dataset(max_chars=20_000)
        return (lambda: gpt.model(n_layer=2)), train_set, gpt.loss_fn
    if name == "tied":
        return tied_gpt, gpt.dataset(max_chars=20_000)[0], gpt.loss_fn
    if name == "hf-gpt2":  # a Hugging Face model built from a config, as it comes
        from tests.parallel._zoo import hf_gpt2, hf_loss

        return hf_gpt2, gpt.dataset(max_chars=20_000)[0], hf_loss
    if name == "hf-llama":
        from tests.parallel._zoo import hf_llama, hf_loss

        return hf_llama, gpt.dataset(max_chars=20_000)[0], hf_loss
    if name == "resnet":  # torchvision's ResNet layout (BatchNorm), on the digits
        from tests.parallel._zoo import resnet
        from weft.demo.data import digits

        return resnet, digits()[0], torch.nn.functional.cross_entropy
    from weft.demo.data import digits
    from weft.demo.models import digits_cnn

    def make():
        torch.manual_seed(0)
        return digits_cnn(8)
    return make, digits()[0], torch.nn.functional.cross_entropy


def train(plan, task="gpt", steps=STEPS, start=0, load=None, save=None, accumulate=1,
          replicas=1):
    """The one training loop: only `plan` changes between runs (`accumulate`: the batch in
    that many pieces, all but the last backward inside `model.no_sync()`; `replicas`: the
    forward in the pieces that many data-parallel replicas get, for BatchNorm's statistics)."""
    make, train_set, loss_fn = _task(task)
    example = torch.stack([train_set[i][0] for i in range(BATCH)])  # a global batch's shape
    model = weft.parallelize(make(), plan, example_input=example)
    LOCAL_SHAPES["last"] = {n: tuple(getattr(p, "_local_tensor", p).shape)
                            for n, p in model.module.named_parameters()}
    COORDS["last"] = tuple(model.mesh.get_coordinate()) if model.mesh is not None else None
    fabric = getattr(getattr(model.runner, "comm", None), "fabric", None)
    COMM_DEVICES["last"] = list(fabric.devices) if fabric is not None else None
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    if load:
        assert model.load(load, opt) == {"step": start}
    for i, (x, y) in enumerate(model.loader(train_set, batch_size=BATCH, shuffle=True, seed=1)):
        if i >= start + steps:
            break
        if i >= start:
            if model.pipeline is not None:  # pipelined plans run their schedule
                loss = model.step(x, y, loss_fn)  # the loss on the last stage only
                assert (loss is None) != model.pipeline.last and (loss is None or loss > 0)
            elif accumulate > 1:
                pieces = list(zip(x.chunk(accumulate), y.chunk(accumulate)))
                for j, (xs, ys) in enumerate(pieces):
                    sync = model.no_sync() if j < len(pieces) - 1 else contextlib.nullcontext()
                    with sync:
                        (loss_fn(model(xs), ys) / accumulate).backward()
            elif replicas > 1:  # DistributedSampler: replica r holds items r, r + R, ...
                loss = sum(loss_fn(model(x[r::replicas]), y[r::replicas])
                           for r in range(replicas)) / replicas
                loss.backward()
            else:
                out = model(x)
                if torch.is_tensor(out):
                    OUTPUT_DTYPES[model.plan.name] = out.dtype
                    out = out.float()
                loss = loss_fn(out, y)
                loss.backward()
            opt.step()
            opt.zero_grad()
    if save:
        model.save(save, opt, step=start + steps)
    return model.full_state_dict()


FOUR_STAGES = {"split": ["blocks.0", "blocks.1", "ln_f"], "schedule": "interleaved",
               "stages_per_rank": 2, "microbatches": 4}
CASES = {
    "dp": {"plan": _plan("dp")},
    "dp-ddp": {"plan": _plan("dp", data_parallel={"replicate": "ddp"})},
    "dp-weft-communicator": {"plan": _plan("dp", data_parallel={"communicator": "weft"})},
    "fsdp": {"plan": _plan("fsdp")},
    "hsdp": {"plan": _plan("hsdp")},
    "tp": {"plan": _plan("tp")},
    "dp-tp": {"plan": _plan("dp_tp")},
    # a placement (weft plan auto's): mesh rank r is the process on device placement[r];
    # each process names its device through $WEFT_DEVICE ("gpu{rank}": process g is on
    # gpug); weft's communicator schedules the dp all-reduce over those devices of ring:4
    "dp-tp-placed": {"plan": _plan("dp_tp", placement=["gpu3", "gpu1", "gpu2", "gpu0"],
                                   data_parallel={"communicator": "weft",
                                                  "topology": "ring:4"}),
                     "device": "gpu{rank}"},
    "dp-tp-fsdp-replicate": {"plan": _plan("dp_tp", data_parallel={"replicate": "fsdp"})},
    "fsdp-tp": {"plan": _plan("fsdp_tp")},
    "dp-tp-sp": {"plan": _plan("tp_sp")},
    "dp-accumulate": {"plan": _plan("dp"), "accumulate": 2},
    "ddp-accumulate": {"plan": _plan("dp", data_parallel={"replicate": "ddp"}), "accumulate": 2},
    "fsdp-accumulate": {"plan": _plan("fsdp"), "accumulate": 2},
    "pp-dp": {"plan": _plan("pp_dp")},
    "pp-fsdp": {"plan": _plan("pp_fsdp")},
    "pp-tp": {"plan": _plan("pp_tp")},
    # two stages per rank: interleaved 1F1B with weft DP and recomputed blocks; a zero-bubble
    # V schedule (stages 0,3 on pp rank 0) with TP inside the stages
    "pp-dp-interleaved-ac": {"plan": _plan("pp_dp", pipeline=FOUR_STAGES,
                                           activation_checkpoint=["blocks.*"])},
    "pp-tp-zbv": {"plan": _plan("pp_tp", pipeline={**FOUR_STAGES,
                                                   "schedule": "torch:ZBVZeroBubble"})},
    "digits-dp": {"plan": _plan("dp"), "task": "digits"},
    "digits-fsdp": {"plan": _plan("fsdp", data_parallel={"shard_modules": []}), "task": "digits"},
    "digits-hsdp": {"plan": _plan("hsdp", data_parallel={"shard_modules": ["[0-9]"]}),
                        "task": "digits"},
    # models as libraries build them: DP and FSDP plans out of the box
    "resnet-dp": {"plan": _plan("dp"), "task": "resnet"},
    "resnet-fsdp": {"plan": _plan("fsdp", data_parallel={"shard_modules": ["layer*"]}),
                    "task": "resnet"},
    # a head tied to the embedding (weft.parallel.tied): tensor parallelism keeps one
    # tensor for both uses; stages on different ranks sum their copies' gradients
    "tied-tp": {"plan": _plan("tp"), "task": "tied"},
    "tied-pp-tp": {"plan": _plan("pp_tp"), "task": "tied"},
    "tied-pp-dp": {"plan": _plan("pp_dp"), "task": "tied"},
    "tied-pp-fsdp": {"plan": _plan("pp_fsdp"), "task": "tied"},
    "tied-pp-tp-interleaved": {"plan": _plan("pp_tp", pipeline=FOUR_STAGES), "task": "tied"},
    # the embedding and the head as fully_shard units of their own: sharded together
    "tied-fsdp-units": {"plan": _plan("fsdp", data_parallel={
        "shard_modules": ["tok", "blocks.*", "head"]}), "task": "tied"},
    # run where transformers imports; skipped (importorskip) where it does not
    "hf-gpt2-dp": {"plan": _plan("dp"), "task": "hf-gpt2"},
    "hf-gpt2-fsdp": {"plan": _plan("fsdp", data_parallel={"shard_modules": ["transformer.h.*"]}),
                     "task": "hf-gpt2"},
    # torch.fx cannot trace its forward: torch.export captures it on a micro-batch; its
    # lm_head (stage 1) is tied to transformer.wte (stage 0)
    "hf-gpt2-pp-dp": {"plan": _plan("pp_dp", pipeline={"split": ["transformer.h.1"]}),
                      "task": "hf-gpt2"},
    # the same capture, tensor parallelism inside the stages (Llama's projections)
    "hf-llama-pp-tp": {"plan": {
        "format": "weft.plan/1", "name": "hf-llama-pp-tp", "mesh": {"pp": 2, "tp": 2},
        "pipeline": {"split": ["model.layers.1"], "schedule": "1f1b", "microbatches": 4},
        "tensor_parallel": [
            {"module": "model.layers.*.self_attn.[qkv]_proj", "style": "colwise"},
            {"module": "model.layers.*.self_attn.o_proj", "style": "rowwise"},
            {"module": "model.layers.*.mlp.[gu]*_proj", "style": "colwise"},
            {"module": "model.layers.*.mlp.down_proj", "style": "rowwise"}]},
        "task": "hf-llama"},
}
# Checkpoint chains: (plan, steps) saved, then loaded under the next plan for the rest.
CHAINS = {
    "fsdp->dp-tp": [("fsdp", 2), ("dp_tp", 1)],
    "tp->fsdp-tp": [("tp", 1), ("fsdp_tp", 2)],
    "dp->hsdp": [("dp", 2), ("hsdp", 1)],
    "pp-dp->fsdp-tp": [("pp_dp", 2), ("fsdp_tp", 1)],
    "tp->pp-fsdp": [("tp", 1), ("pp_fsdp", 2)],
    "fsdp->pp-tp": [("fsdp", 1), ("pp_tp", 2)],
    # the tied GPT: the last stage holds the tied weight as head.weight; its optimizer
    # state is saved under tok.weight, as one process saves it
    "tied:pp-tp->tp": [("pp_tp", 2), ("tp", 1)],
    "tied:tp->pp-dp": [("tp", 1), ("pp_dp", 2)],
    "tied:pp-dp->pp-fsdp": [("pp_dp", 1), ("pp_fsdp", 2)],
}


def _chain_task(name: str) -> str:
    return "tied" if name.startswith("tied:") else "gpt"


# Mixed precision (bf16 compute): reductions in another order round differently in bf16 and
# Adam amplifies that, so these are checked loosely against fp32 (and for bf16 compute).
MIXED = {"fsdp-bf16": _plan("fsdp", name="fsdp-bf16", **BF16),
         "dp-tp-bf16": _plan("dp_tp", name="dp-tp-bf16", **BF16)}


# docs/parallelize.md, steps 2-4: examples/train_gpt.py under these plans (step 1 is the
# single-process reference; step 5, pp_dp_tp, needs 8 ranks: test_parallelize_8.py).
DOC_STEPS = ("dp", "fsdp", "dp_tp")


def doc_train(plan):
    model, _, _ = train_gpt.train(plan, steps=STEPS, batch=BATCH, lr=LR)
    return model.full_state_dict()


def _run_case(out, name, case):
    case = dict(case)
    device = case.pop("device", None)
    if device:
        os.environ["WEFT_DEVICE"] = device
    try:
        out[name] = train(**case)
    finally:
        os.environ.pop("WEFT_DEVICE", None)
    out[name + ":local"] = LOCAL_SHAPES["last"]
    out[name + ":coords"] = COORDS["last"]
    out[name + ":comm_devices"] = COMM_DEVICES["last"]


def _world(ckpt_dir):
    out = {}
    # the placed plan first: it renumbers the processes, which only a process's first mesh
    # may do; a later placement that would renumber them again is refused
    before = dist.get_rank()
    _run_case(out, "dp-tp-placed", CASES["dp-tp-placed"])
    out["placed:ranks"] = (before, dist.get_rank())
    again = {**CASES["dp-tp-placed"],
             "plan": _plan("dp_tp", placement=["gpu0", "gpu1", "gpu2", "gpu3"])}
    try:
        _run_case({}, "again", again)
    except PlanError as exc:
        out["placed:again"] = str(exc)
    out.update({f"doc:{f}": doc_train(PLANS / f"{f}.yaml") for f in DOC_STEPS})
    for name, case in CASES.items():
        if (case.get("task", "").startswith("hf-") and not HAVE_HF) or name == "dp-tp-placed":
            continue
        _run_case(out, name, case)
    for name, plan in MIXED.items():
        out[name] = (train(plan), OUTPUT_DTYPES[name])
    for name, chain in CHAINS.items():
        start, prev = 0, None
        for i, (plan, steps) in enumerate(chain):
            path = f"{ckpt_dir}/{name}-{i}"
            state = train(_plan(plan), task=_chain_task(name), steps=steps, start=start,
                          load=prev, save=path)
            start, prev = start + steps, path
        out[name] = state
    return out


@pytest.fixture(scope="module")
def world_results(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt")
    results = launch(_world, WORLD, args=(str(ckpt),), timeout=120)
    return results, ckpt


@pytest.fixture(scope="module")
def references():
    single = _plan("single")
    refs = {"gpt": train(single), "digits": train(single, task="digits"),
            "doc": doc_train(PLANS / "single.yaml"),
            # BatchNorm normalises over each replica's share: the reference does the same
            "resnet": train(single, task="resnet", replicas=WORLD),
            "tied": train(single, task="tied")}
    if HAVE_HF:
        refs["hf-gpt2"] = train(single, task="hf-gpt2")
        refs["hf-llama"] = train(single, task="hf-llama")
    return refs


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES) + list(CHAINS))
def test_plan_matches_single_process(case, world_results, references):
    task = CASES.get(case, {}).get("task", _chain_task(case))
    if task.startswith("hf-"):
        pytest.importorskip("transformers")
    results, _ = world_results
    # BatchNorm's running statistics are each replica's own (weft DP: rank 0's); the
    # parameters are what every replica must agree on with the reference
    only = {n for n, _ in _task(task)[0]().named_parameters()} if task == "resnet" else None
    ref = references[task]
    for rank, res in enumerate(results):
        state = res[case]
        if task == "hf-gpt2":
            from tests.parallel._zoo import without_key_bias

            state, ref = without_key_bias(state), without_key_bias(references[task])
        assert_params_close(state, ref, f"{case} rank {rank}", only)
    # the parameters moved: a plan that trained nothing would not match a trained reference
    initial = _task(task)[0]().state_dict()
    assert any(not torch.allclose(initial[k], results[0][case][k]) for k in initial)


@pytest.mark.slow
def test_placement_decides_each_process_mesh_coordinate(world_results):
    """Process g (on device gpug) becomes the mesh rank whose device is gpug, weft's
    data-parallel communicator runs its group over the devices its ranks are placed on,
    and the plan still trains to the reference (above); a second renumbering in the same
    process is refused."""
    import numpy as np

    results, _ = world_results
    placement = CASES["dp-tp-placed"]["plan"]["placement"]
    shape = (1, WORLD // 2, 1, 2)  # pp, dp_replicate, dp_shard, tp
    for g, res in enumerate(results):
        r = placement.index(f"gpu{g}")
        assert res["placed:ranks"] == (g, r)
        assert res["dp-tp-placed:coords"] == tuple(np.unravel_index(r, shape)), g
        # the dp group of mesh rank r: the ranks of its tp coordinate, r % 2 and r % 2 + 2
        assert res["dp-tp-placed:comm_devices"] == [placement[r % 2], placement[r % 2 + 2]]
        # later plans without a placement: rank order, in the new numbering
        assert res["dp-tp:coords"] == tuple(np.unravel_index(r, shape))
        assert "only the first weft.parallelize" in res["placed:again"]


@pytest.mark.slow
@pytest.mark.parametrize("step", DOC_STEPS)
def test_incremental_path_changes_only_the_plan(step, world_results, references):
    """The one training script of docs/parallelize.md reaches the single-process parameters
    under each plan of the path."""
    results, _ = world_results
    for rank, res in enumerate(results):
        assert_params_close(res[f"doc:{step}"], references["doc"], f"train_gpt.py {step} rank {rank}")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_describe_says_what_each_rank_holds(case, world_results):
    """weft.plan.describe (what `weft plan show` prints) against the parameters each rank
    really held after weft.parallelize."""
    import weft.plan as wp

    task = CASES[case].get("task", "gpt")
    if task.startswith("hf-"):
        pytest.importorskip("transformers")
    results, _ = world_results
    views = wp.describe(wp.from_dict(CASES[case]["plan"]), _task(task)[0](), WORLD)
    for res in results:
        rank = res["placed:ranks"][1]  # the mesh rank of the process (renumbered, _world)
        said = {name: local for name, _, local, _ in views[rank].params}
        assert res[case + ":local"] == said, (case, rank)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MIXED))
def test_mixed_precision_computes_in_bf16(case, world_results, references):
    results, _ = world_results
    state, dtype = results[0][case]
    assert dtype == torch.bfloat16
    ref = references["gpt"]
    errs = {k: float((state[k] - v).norm() / v.norm()) for k, v in ref.items()}
    assert all(state[k].dtype == torch.float32 for k in state)  # fp32 master weights
    assert max(errs.values()) > TOL  # bf16 really was used ...
    assert max(errs.values()) < 0.3, errs  # ... on the same training run


@pytest.mark.slow
def test_checkpoint_from_four_ranks_continues_in_one_process(world_results, references):
    """The 4-rank fsdp->dp-tp chain's last checkpoint (3 steps) loads under the one-rank plan;
    two more steps equal five single-process steps."""
    _, ckpt = world_results
    state = train(_plan("single"), steps=2, start=3, load=str(ckpt / "fsdp->dp-tp-1"))
    assert_params_close(state, train(_plan("single"), steps=5), "4 ranks -> 1 process")


def test_one_rank_plan_runs_without_process_group():
    assert not dist.is_initialized()
    model = weft.parallelize(gpt.model(n_layer=1), PLANS / "single.yaml")
    assert model.mesh is None and model.dp_size == 1
    x = gpt.example_input(2)
    assert model(x).shape == (2, gpt.CONFIG["block"], gpt.CONFIG["vocab"])


def test_world_mismatch_is_an_error_before_anything_runs():
    with pytest.raises(PlanError, match=r"mesh.dp_replicate: -1 cannot be inferred|"
                                        r"mesh: pp=1 x dp_replicate=2 x dp_shard=1 x tp=2 = 4 ranks"):
        weft.parallelize(gpt.model(n_layer=1), PLANS / "dp_tp.yaml")


BAD = [
    ({"tensor_parallel": [{"module": "blocks.*.mlp.fc2", "style": "colwise"}]},
     "tensor_parallel[0].module: 'blocks.*.mlp.fc2' matches no module of GPT"),
    ({"mesh": {"dp_replicate": 3, "tp": 2}}, "= 6 ranks, but the world has 2"),
    ({"activation_checkpoint": ["blocks.9"]}, "activation_checkpoint[0]: 'blocks.9' matches no module"),
    ({"mesh": {"dp_replicate": 1, "tp": 2}, "tensor_parallel": [{"module": "tok", "style": "colwise"},
                                                                {"module": "pos", "divide": ["block"]}]},
     "tensor_parallel[1].divide[0]: module 'pos' has no integer attribute 'block'"),
]


def _only_rank0_parallelizes(plans):
    """Rank 0 tries each bad plan; rank 1 never calls parallelize. Had rank 0 started a
    collective (mesh, broadcast), it would wait for rank 1 until the timeout instead."""
    messages = []
    if dist.get_rank() == 0:
        for plan in plans:
            try:
                weft.parallelize(gpt.model(n_layer=1), plan)
                messages.append(None)
            except PlanError as exc:
                messages.append(str(exc))
    return messages


def test_bad_plans_fail_in_the_rank_before_any_traffic():
    messages = launch(_only_rank0_parallelizes, 2, args=([_plan("dp_tp", **o) for o, _ in BAD],),
                      timeout=20)[0]
    for (_, want), got in zip(BAD, messages):
        assert got is not None and want in got, (want, got)


@pytest.mark.parametrize("over,message", [
    ({"pipeline": {"schedule": "pipedream"}}, "pipeline.schedule: 'pipedream' is not run"),
    ({"pipeline": {"split": "planner"}}, "pipeline.split: 'planner' is not run"),
    ({"mesh": {"pp": 2, "dp_replicate": 2}, "data_parallel": {"replicate": "ddp"}},
     "data_parallel.replicate: 'ddp' with mesh.pp > 1"),
    ({"mesh": {"pp": 2, "dp_replicate": 2}, "pipeline": {**FOUR_STAGES,
                                                         "schedule": "torch:ZBVZeroBubble"}},
     "pipeline.schedule: 'torch:ZBVZeroBubble' splits backward"),
    ({"mixed_precision": {"param_dtype": "bfloat16"}}, "mixed_precision: with mesh.pp > 1"),
    ({"example": torch.zeros(6, 32, dtype=torch.long)},
     "pipeline.microbatches: a global batch of 6 does not split into 1 replicas x 4"),
])
def test_pipeline_limits_are_plan_errors(over, message):
    """What the pp runner cannot do yet is refused before any traffic (no process group here)."""
    import weft.plan as wp
    from weft.parallel.pp import check_pipeline

    example = over.pop("example", torch.zeros(8, 32, dtype=torch.long))
    data = _plan("pp", **{"pipeline": {"microbatches": 4}, **over})
    world = 1
    for v in data["mesh"].values():
        world *= v
    plan = wp.check(wp.from_dict(data), gpt.model(), world)
    with pytest.raises(PlanError) as err:
        check_pipeline(plan, example)
    assert message in str(err.value), str(err.value)
