"""PlannerSettings: one checked value for the six calibration numbers, kept in the plan."""

import json
import math

import pytest

from weft.errors import PlanError
from weft.parallel.pipeline.stages import PipelinePlan, from_boundaries
from weft.planner import PlannerSettings, partition
from weft.planner.settings import check_setting

from .test_partition import make_profile, two_hosts

FIELDS = ["cpu_copy_bw", "action_overhead_s", "step_overhead_s", "latency_s", "allreduce_bw",
          "compute_scale"]


def test_defaults_charge_nothing_and_fields_are_the_six():
    s = PlannerSettings()
    assert list(s.to_dict()) == FIELDS
    assert s.to_dict() == {"cpu_copy_bw": None, "action_overhead_s": 0.0, "step_overhead_s": 0.0,
                           "latency_s": None, "allreduce_bw": None, "compute_scale": 1.0}


@pytest.mark.parametrize("field, bad", [
    ("cpu_copy_bw", 0), ("cpu_copy_bw", -1.0), ("cpu_copy_bw", float("nan")),
    ("action_overhead_s", -1e-6), ("action_overhead_s", float("inf")), ("action_overhead_s", None),
    ("step_overhead_s", "fast"), ("latency_s", -0.5), ("latency_s", float("inf")),
    ("allreduce_bw", 0.0), ("compute_scale", 0.0), ("compute_scale", float("inf")),
    ("compute_scale", True),
])
def test_bad_values_are_rejected_naming_the_field(field, bad):
    with pytest.raises(PlanError, match=f"^{field} must be a"):
        PlannerSettings(**{field: bad})
    with pytest.raises(PlanError, match="^--flag must be a"):
        check_setting(field, bad, "--flag")


def test_values_are_floats_frozen_and_replace_checks():
    s = PlannerSettings(cpu_copy_bw=10, allreduce_bw=float("inf"), latency_s=0)
    assert s.cpu_copy_bw == 10.0 and isinstance(s.cpu_copy_bw, float)
    assert math.isinf(s.allreduce_bw) and s.latency_s == 0.0  # a free all-reduce; 0 latency
    with pytest.raises(AttributeError):
        s.cpu_copy_bw = 5.0  # frozen
    t = s.replace(compute_scale=1.5)
    assert (t.compute_scale, s.compute_scale, t.cpu_copy_bw) == (1.5, 1.0, 10.0)
    with pytest.raises(PlanError, match="no field 'copy_bw'"):
        s.replace(copy_bw=1.0)
    with pytest.raises(PlanError, match="action_overhead_s must be"):
        s.replace(action_overhead_s=-1)


def test_dict_round_trip_and_bad_dicts():
    s = PlannerSettings(cpu_copy_bw=2.5e9, action_overhead_s=1e-4, step_overhead_s=2e-3,
                        latency_s=5e-5, allreduce_bw=1e9, compute_scale=1.25)
    assert PlannerSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert PlannerSettings.from_dict({"compute_scale": 2}) == PlannerSettings(compute_scale=2.0)
    with pytest.raises(PlanError, match="p.json: unknown planner setting 'speed'"):
        PlannerSettings.from_dict({"speed": 1}, "p.json")
    with pytest.raises(PlanError, match=r"p.json.latency_s must be a finite number >= 0, got -1"):
        PlannerSettings.from_dict({"latency_s": -1}, "p.json")
    with pytest.raises(PlanError, match="must be a mapping"):
        PlannerSettings.from_dict([1, 2])


def test_plan_keeps_its_settings_and_old_plans_still_load(tmp_path):
    prof = make_profile([(1, 1, 100, 1e4, 0)] * 3)
    s = PlannerSettings(cpu_copy_bw=1e6, action_overhead_s=0.01, compute_scale=1.5)
    plan = partition(prof, two_hosts(1, 1e6, 1e5, 1e12), microbatches=2, settings=s)
    plan.save(tmp_path / "new.json")
    assert PlannerSettings.from_plan(PipelinePlan.load(tmp_path / "new.json")) == s
    # a plan written before extra.settings existed: only extra.compute_scale
    old = from_boundaries([(0, 1), (1, 3)]).to_dict()
    old["extra"] = {"fits": True, "compute_scale": 1.75, "predicted": {}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert PlannerSettings.from_plan(PipelinePlan.load(tmp_path / "old.json")) == \
        PlannerSettings(compute_scale=1.75)
    old["extra"] = {}
    (tmp_path / "older.json").write_text(json.dumps(old))
    assert PlannerSettings.from_plan(PipelinePlan.load(tmp_path / "older.json")) == \
        PlannerSettings()
    old["extra"] = {"settings": {"compute_scale": -2}}
    bad = PipelinePlan.from_dict(old)
    with pytest.raises(PlanError, match="plan extra.settings.compute_scale must be"):
        PlannerSettings.from_plan(bad)
