"""Bad input to adaptive training: clear errors before any worker starts, and at run time a
model factory failing on the joiners, a resize beyond the dataset and an optimizer whose state
cannot be averaged are refused while the survivors keep training from their last good state."""

import os
import re

import pytest
import torch
from torch import nn

from weft.adapt import AdaptConfig, Workload, WorkloadError, fit
from weft.adapt.host import run_elastic
from weft.adapt.rules import policy_from_dict
from weft.adapt.sharding import EpochSharder

N, PER = 80, 16  # 2 workers: steps of 32, 32, 16 samples per epoch


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 6, generator=g)
    return torch.utils.data.TensorDataset(x, (x.sum(1) > 0).long())


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))


def mlp_not_on_standbys():
    """Builds everywhere except in standby workers (as on a machine missing something)."""
    if os.environ.get("WEFT_WORKER_ROLE") == "standby":
        raise RuntimeError("this machine cannot build the model (simulated)")
    return mlp()


class ListSGD(torch.optim.SGD):
    """SGD that also keeps a Python list per parameter: state that cannot be averaged."""

    def step(self, closure=None):
        out = super().step(closure)
        for p in self.param_groups[0]["params"]:
            self.state[p].setdefault("history", []).append(len(self.state[p].get("history", [])))
        return out


def list_sgd(params):
    return ListSGD(params, lr=0.5)


def test_bad_workloads_fail_before_any_worker_starts():
    def run(**kw):
        args = dict(model=mlp, dataset=data(), optimizer=list_sgd, config={"workers": 2})
        args.update(kw)
        fit(args.pop("model"), args.pop("dataset"), **args)

    with pytest.raises(WorkloadError, match=r"dataset: 80 samples is smaller than the global "
                                            r"batch 96 \(2 workers x batch_size 48\)"):
        run(config={"workers": 2, "batch_size": 48})
    with pytest.raises(WorkloadError, match="model: the factory .* failed: ZeroDivisionError"):
        run(model=lambda_free_broken_factory)
    with pytest.raises(WorkloadError, match="loss_fn: must return a scalar"):
        run(loss_fn=lambda_free_bad_loss)
    with pytest.raises(WorkloadError, match="state: object needs state_dict"):
        run(state=object())
    with pytest.raises(WorkloadError, match="cannot be sent to the workers"):
        run(model=lambda: mlp())


def lambda_free_broken_factory():
    return 1 / 0


def lambda_free_bad_loss(out, y):
    return nn.functional.cross_entropy(out, y, reduction="none")


def reference(steps: int) -> dict:
    model, ds = mlp(), data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    order, x, y = EpochSharder(N, 0), *ds.tensors
    for s in range(steps):
        epoch, k = divmod(s, 3)
        idx = order.permutation(epoch)[32 * k:32 * k + 32]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.state_dict()


@pytest.mark.slow
def test_failing_joiners_oversized_resize_and_unaveragable_state_leave_survivors_training():
    policy = policy_from_dict({"rules": [
        {"when": "step == 2", "do": {"resize": 3}},     # its joiners cannot build the model
        {"when": "step == 3", "do": {"resize": 6}},     # 6 x 16 > 80 samples
        {"when": "step == 4", "do": {"switch": "sma"}},  # ListSGD state cannot be averaged
    ]})
    cfg = AdaptConfig(workers=2, max_workers=6, standby=2, epochs=3, batch_size=PER)
    work = Workload(mlp_not_on_standbys, data(), optimizer=list_sgd)
    out = run_elastic(cfg, policy, timeout=300, workload=work)
    assert len(out["joiner_errors"]) >= 2 and all(
        "this machine cannot build the model (simulated)" in m
        for m in out["joiner_errors"].values())
    workers = [out["reports"][w] for w in (0, 1)]
    for r in workers:
        events = {e["step"]: e for e in r["events"] if e["kind"] in ("resize", "rejected")}
        assert events[2]["kind"] == "resize" and events[2]["new"] == 2
        # how many standbys failed by then (the agent gives up after 3) depends on timing
        assert re.search(r"2 -> 2 workers \(asked 3: [1-3] standby worker\(s\) on node 1 failed to start",
                         events[2]["detail"]) and "cannot build the model (simulated)" in events[2]["detail"]
        assert "Resize(workers=6): global batch 96 (6 x 16) exceeds the dataset (80 samples)" \
            in events[3]["detail"]
        assert "ListSGD state 'history' of parameter 0 is a list, which cannot be averaged" \
            in events[4]["detail"] and "staying with 'sgd'" in events[4]["detail"]
        assert r["step"] == 9 and {h["world"] for h in r["history"]} == {2}
        assert {h["strategy"] for h in r["history"]} == {"sgd"}
    assert torch.equal(workers[0]["params"], workers[1]["params"])
    trained = workers[0]["state"]["model"]
    for k, v in reference(9).items():
        torch.testing.assert_close(trained[k], v, rtol=0, atol=1e-6, msg=k)
