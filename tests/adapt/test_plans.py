"""Plans under adaptation: the GPT example fully sharded (FSDP, weft.parallelize) over 2
workers, resized to 4 (the optimizer's sharded state re-sharded), keeps training to the
parameters of an unresized single-process reference (1e-5)."""

from pathlib import Path

import pytest
import torch

from weft.adapt import AdaptConfig, ScheduleResize, SpecRef, Workload
from weft.adapt.host import run_elastic
from weft.adapt.sharding import EpochSharder
from weft.model_spec import load_module

GPT = str(Path(__file__).resolve().parents[2] / "examples" / "gpt.py")
SMALL = {"d_model": 32, "n_head": 2, "n_layer": 2, "block": 16}
DATA = {"block": 16, "max_chars": 4000}
FSDP = {"format": "weft.plan/1", "name": "fsdp", "mesh": {"dp_shard": -1},
        "data_parallel": {"shard_modules": ["blocks.*"]}}
GLOBAL, STEPS = 16, 10


def adam(params):
    return torch.optim.Adam(params, lr=2e-3)


def reference() -> dict:
    gpt, _ = load_module(GPT)
    model, (train, _) = gpt.model(**SMALL), gpt.dataset(**DATA)
    opt = adam(model.parameters())
    order = EpochSharder(len(train), 0)
    for s in range(STEPS):
        idx = order.permutation(0)[s * GLOBAL:(s + 1) * GLOBAL]
        x, y = torch.utils.data.default_collate([train[int(i)] for i in idx])
        opt.zero_grad()
        gpt.loss_fn(model(x), y).backward()
        opt.step()
    return model.state_dict()


@pytest.mark.slow
def test_fsdp_plan_resized_2_to_4_reshards_and_matches_the_reference():
    work = Workload(SpecRef(f"{GPT}:model", kwargs=SMALL), SpecRef(f"{GPT}:dataset", kwargs=DATA),
                    SpecRef(f"{GPT}:loss_fn"), adam, plan=FSDP)
    cfg = AdaptConfig(workers=2, max_workers=4, epochs=1, max_steps=STEPS, batch_size=8,
                      batch_rule="global", standby=2,
                      snapshot_every=STEPS)  # no failure here: no per-step state gathering
    out = run_elastic(cfg, ScheduleResize({4: 4}), timeout=400, workload=work)
    finals = [r for r in out["reports"].values() if r.get("rank") is not None]
    assert len(finals) == 4 and not out["dead"]
    r0 = out["reports"][0]
    worlds = [(m["world"], m["why"]) for m in r0["memberships"]]
    assert worlds == [(2, "start"), (4, "resize")]
    # each worker holds a shard: about half of the parameters in 2, a quarter in 4
    held = {m["world"]: m["local_params"] for m in r0["memberships"]}
    total = sum(v.numel() for v in reference().values())
    assert held[2] < 0.6 * total and held[4] < 0.35 * total
    assert [e["step"] for e in r0["events"] if e["kind"] == "resize"] == [4]
    assert r0["history"][-1]["step"] == STEPS
    a = r0["state"]
    for r in finals[1:]:  # the gathered (whole) state is the same on every worker
        for k in a["model"]:
            assert torch.equal(r["state"]["model"][k], a["model"][k])
    for k, v in reference().items():
        torch.testing.assert_close(a["model"][k], v, rtol=0, atol=1e-5, msg=k)
