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
