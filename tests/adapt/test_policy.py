"""Policy API, YAML rules and action validation (no processes)."""

import pytest

from weft.adapt import actions as A
from weft.adapt.config import AdaptConfig, ConfigError
from weft.adapt.policy import (AdaptiveBatchSize, Compose, Context, ScheduleResize, SwitchOnNoise,
                               ThroughputScaler, to_policy)
from weft.adapt.rules import PolicyError, load_policy_file, policy_from_dict


def ctx(**kw):
    base = dict(step=20, epoch=0, world=2, batch_size=16, lr=0.1, strategy="sma", min_workers=1,
                max_workers=4, dataset_size=1000)
    base.update(kw)
    return Context(**base)


@pytest.mark.parametrize("action,needle", [
    (A.Resize(0), "at least 1 worker"),
    (A.Resize(9), "max_workers=4"),
    (A.Resize(2.5), "must be an integer"),
    (A.SetBatchSize(-4), "positive integer"),
    (A.SetBatchSize(0), "positive integer"),
    (A.SetBatchSize(600), "exceeds the dataset"),
    (A.SetLR(float("nan")), "positive finite"),
    (A.SetLR(-1.0), "positive finite"),
    (A.SwitchStrategy("allgather"), "unknown strategy"),
    ("resize please", "is not an action"),
])
def test_invalid_actions_are_rejected_with_a_reason(action, needle):
    msg = A.validate(action, ctx())
    assert msg is not None and needle in msg


def test_valid_actions_pass():
    for a in (A.Resize(4), A.Resize(1), A.SetBatchSize(32), A.SetLR(0.01), A.SwitchStrategy("pair")):
        assert A.validate(a, ctx()) is None


def test_builtin_policies():
    assert AdaptiveBatchSize(every=10).on_step({"noise_scale": 256.0}, ctx()) == \
        A.SetBatchSize(128, "linear")
    assert AdaptiveBatchSize(every=10).on_step({"noise_scale": 40.0}, ctx()) is None  # 16 ~ 20
    p = SwitchOnNoise(threshold=50, to="sgd")
    assert p.on_step({"noise_scale": 10.0}, ctx()) is None
    assert p.on_step({"noise_scale": 60.0}, ctx()) == A.SwitchStrategy("sgd")
    assert p.on_step({"noise_scale": 60.0}, ctx()) is None  # fires once
    assert ScheduleResize({20: 4}).on_step({}, ctx()) == A.Resize(4)
    t = ThroughputScaler(interval=10, min_gain=1.2)
    assert t.on_step({"throughput": 100.0}, ctx(step=10)) == A.Resize(3)
    assert t.on_step({"throughput": 110.0}, ctx(step=20, world=3)) == A.Resize(2)  # no gain
    assert t.on_step({"throughput": 500.0}, ctx(step=30)) is None


def test_function_policy_and_compose_state():
    pol = to_policy([lambda m, c: A.SetLR(0.5) if c.step == 20 else None, SwitchOnNoise(5)])
    assert pol.on_step({"noise_scale": 9.0}, ctx()) == [A.SetLR(0.5), A.SwitchStrategy("sgd")]
    state = pol.state_dict()
    fresh = to_policy([lambda m, c: None, SwitchOnNoise(5)])
    fresh.load_state_dict(state)
    assert fresh.policies[1].fired


def test_yaml_rules(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("""
train: {workers: 2, strategy: sma}
policies:
  - switch_on_noise: {threshold: 30}
  - schedule: {40: 3}
rules:
  - when: "step >= 20 and loss < 0.5 and strategy != 'sgd'"
    do: [{lr: 0.01}, {batch_size: 32, scale_lr: sqrt}]
    once: true
""")
    pol, train = load_policy_file(f)
    assert train == {"workers": 2, "strategy": "sma"}
    assert pol.on_step({"loss": 0.3}, ctx()) == [A.SetLR(0.01), A.SetBatchSize(32, "sqrt")]
    assert pol.on_step({"loss": 0.3}, ctx()) == []  # once
    assert pol.on_step({}, ctx(step=40)) == [A.Resize(3)]  # missing metric: rule is false


@pytest.mark.parametrize("doc,needle", [
    ({"rules": [{"when": "__import__('os')", "do": {"lr": 1}}]}, "only abs/min/max"),
    ({"rules": [{"when": "step >", "do": {"lr": 1}}]}, "invalid expression"),
    ({"rules": [{"when": "x.y > 1", "do": {"lr": 1}}]}, "Attribute is not allowed"),
    ({"rules": [{"when": "step > 1", "do": {"explode": 1}}]}, "unknown action 'explode'"),
    ({"rules": [{"when": "step > 1"}]}, "needs 'when' and 'do'"),
    ({"policies": [{"magic": {}}]}, "unknown policy 'magic'"),
    ({"policies": [{"adaptive_batch": {"nope": 1}}]}, "bad arguments"),
    ({"polices": []}, "unknown section"),
    # issue 14: a rule on an unknown name was accepted and never fired
    ({"rules": [{"when": "stepp == 5", "do": {"lr": 1}}]}, "unknown name 'stepp' in 'stepp == 5' (did you mean 'step'?)"),
    ({"rules": [{"when": "los < 0.1 and step > 2", "do": {"lr": 1}}]}, "unknown name 'los'"),
])
def test_bad_policy_files_name_the_problem(doc, needle):
    with pytest.raises(PolicyError, match=None) as info:
        policy_from_dict(doc, "policy.yaml")
    assert needle in str(info.value) and "policy.yaml" in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy_file(bad)


def test_config_validation():
    with pytest.raises(ConfigError, match="workers=0"):
        AdaptConfig(workers=0)
    with pytest.raises(ConfigError, match="strategy='ring'"):
        AdaptConfig(strategy="ring")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['wrokers'\]"):
        AdaptConfig.from_dict({"wrokers": 2})
    assert isinstance(to_policy(None), Compose)


def test_follow_capacity_waits_for_patience_and_stays_in_bounds():
    from weft.adapt.policy import FollowCapacity

    p = FollowCapacity(patience=3)
    assert p.on_step({}, ctx(capacity=0)) is None  # not measured yet: never acts
    assert [p.on_step({}, ctx(capacity=4)) for _ in range(3)] == [None, None, A.Resize(4)]
    assert p.on_step({}, ctx(capacity=2)) is None  # matches the world: the count restarts
    assert [p.on_step({}, ctx(capacity=9)) for _ in range(3)][-1] == A.Resize(4)  # max_workers
    p = FollowCapacity(patience=1)
    assert p.on_step({}, ctx(world=3, capacity=1, min_workers=2)) == A.Resize(2)  # min_workers
