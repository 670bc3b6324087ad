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



class _TwoRanks:
    """The all-reduce of two replicas held in one process: averages the buffer with the
    other replica's (given), and records this replica's buffer for the other."""

    world_size = 2

    def __init__(self, other=None):
        self.other, self.sent = other, None

    def all_reduce(self, flat, op="sum"):
        assert op == "avg"
        self.sent = flat.clone()
        if self.other is not None:
            flat.add_(self.other).div_(2)


def test_switch_consensus_averages_adam_moments_and_parameters():
    """Strategy switches make replicas equal by averaging parameters AND optimizer state
    (Adam's moments), not only the parameters."""
    from weft.adapt.sync import consensus

    replicas = []
    for seed in (1, 2):  # the same start, each replica its own data: states differ
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        torch.manual_seed(seed)
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
        replicas.append((model, opt))

    def tensors(model, opt):
        return [p.detach().clone() for p in model.parameters()] + [
            s[k].clone() for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]

    before = [tensors(*r) for r in replicas]
    assert not torch.equal(before[0][2], before[1][2])  # Adam's first moments differed
    a = _TwoRanks()
    consensus(*replicas[0], a)                 # rank 0's buffer, nothing to average yet
    b = _TwoRanks(other=a.sent)
    consensus(*replicas[1], b)                 # rank 1 averages with rank 0's
    consensus(*replicas[0], _TwoRanks(other=b.sent))  # and rank 0 with rank 1's
    after = [tensors(*r) for r in replicas]
    for x0, x1, y0, y1 in zip(*before, *after):
        assert torch.equal(y0, y1)
        torch.testing.assert_close(y0, (x0.double() + x1.double()).div(2).to(x0.dtype),
                                   rtol=0, atol=1e-7)
