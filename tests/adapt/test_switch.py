"""Switching sync strategies mid-run keeps training converging; invalid actions are rejected."""

import pytest
import torch

from weft.adapt.config import AdaptConfig
from weft.adapt.host import run_elastic
from weft.adapt.rules import policy_from_dict

POLICY = {"rules": [
    {"when": "step == 5", "do": [{"resize": 0}, {"batch_size": -4}, {"switch": "ring"}]},
    {"when": "step == 40", "do": {"switch": "sma"}},
    {"when": "step == 100", "do": {"switch": "pair"}},
    {"when": "step == 180", "do": {"switch": "sgd"}},
]}


@pytest.mark.slow
def test_strategy_switches_converge_and_invalid_actions_are_rejected():
    cfg = AdaptConfig(workers=2, max_workers=2, epochs=6, lr=0.05, strategy="sgd")
    out = run_elastic(cfg, policy_from_dict(POLICY), timeout=240)
    reports = [r for r in out["reports"].values() if r["role"] == "worker"]
    assert len(reports) == 2 and not out["dead"]
    for r in reports:
        kinds = [(e["step"], e["kind"], e.get("strategy")) for e in r["events"]]
        assert [k for k in kinds if k[1] == "switch"] == [
            (40, "switch", "sma"), (100, "switch", "pair"), (180, "switch", "sgd")]
        rejected = [e["detail"] for e in r["events"] if e["kind"] == "rejected"]
        assert len(rejected) == 3
        assert "at least 1 worker" in rejected[0] and "positive integer" in rejected[1]
        assert "unknown strategy" in rejected[2]
        # Training went on unchanged after the rejected actions.
        h = {x["step"]: x for x in r["history"]}
        assert h[6]["world"] == 2 and h[6]["batch_size"] == 16 and h[6]["strategy"] == "sgd"
        assert h[50]["strategy"] == "sma" and h[150]["strategy"] == "pair"
        assert r["step"] == len(r["history"]) == 6 * -(-1437 // 32)
        assert r["accuracy"] >= 0.95, r["accuracy"]
    assert torch.equal(reports[0]["params"], reports[1]["params"])


def _consensus_rank():
    import torch.distributed as dist

    from weft.adapt.guard import GuardedCommunicator
    from weft.adapt.sync import consensus

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    torch.manual_seed(1 + dist.get_rank())  # each rank its own data: states differ
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()

    def state():
        return {"params": [p.detach().clone() for p in model.parameters()],
                "moments": [(s["exp_avg"].clone(), s["exp_avg_sq"].clone())
                            for s in opt.state.values()]}

    before = state()
    consensus(model, opt, GuardedCommunicator(lambda: False, 60.0))
    return before, state()


def test_switch_consensus_averages_adam_moments_and_parameters():
    """Strategy switches make replicas equal by averaging parameters AND optimizer state
    (Adam's moments), not only the parameters."""
    from weft.launch import launch

    (b0, a0), (b1, a1) = launch(_consensus_rank, 2, timeout=60)
    assert not torch.equal(b0["moments"][0][0], b1["moments"][0][0])  # they did differ
    for key in ("params", "moments"):
        flat = lambda s: [t for x in s[key] for t in (x if isinstance(x, tuple) else (x,))]  # noqa: E731
        for x0, x1, y0, y1 in zip(flat(b0), flat(b1), flat(a0), flat(a1)):
            assert torch.equal(y0, y1)
            torch.testing.assert_close(y0, (x0.double() + x1.double()).div(2).to(x0.dtype),
                                       rtol=0, atol=1e-7)
