"""Throughput tables, traces, YAML specs and their errors."""


import numpy as np
import pytest

from weft.cluster.generate import generate_jobs
from weft.cluster.model import Cluster, ClusterError
from weft.cluster.spec import load_cluster, load_jobs
from weft.cluster.throughputs import ThroughputTable
from weft.cluster.trace import load_trace, read_trace, write_trace


@pytest.fixture(scope="module")
def table(gavel_dir):
    return ThroughputTable.load(gavel_dir / "simulation_throughputs.json", ["v100", "p100", "k80"])


def test_gavel_table(table, gavel_dir):
    assert len(table.keys) == 83
    assert table.iso[("ResNet-50 (batch size 16)", 1)][0] == pytest.approx(11.4, abs=0.05)
    assert table.iso[("ResNet-50 (batch size 128)", 2)][2] == 0.0  # cannot run on K80
    assert all(ka[1] == kb[1] for ka, kb in table.pair)
    old = ThroughputTable.load(gavel_dir / "oracle_throughputs.json", ["v100", "p100", "k80"])
    assert old.iso[("ResNet-50 (batch size 16)", 1)][0] == pytest.approx(17.4, abs=0.05)


def test_read_traces(table, gavel_dir):
    jobs = read_trace(gavel_dir / "traces/physical_cluster/max_min_fairness.trace", table)
    assert len(jobs) == 96 and jobs[0].scale_factor == 4 and jobs[0].total_steps == 925982
    assert max(j.arrival_time for j in jobs) / 3600 == pytest.approx(12.9, abs=0.1)
    static = read_trace(gavel_dir / "traces/physical_cluster/minimize_makespan.trace", table)
    assert len(static) == 100 and all(j.arrival_time == 0 for j in static)
    msr = read_trace(gavel_dir / "traces/msr/seed=0/2869ce.trace", table, skip_unknown=True)
    assert len(msr) == 533 - 179
    with pytest.raises(ClusterError, match="2869ce.trace:"):
        read_trace(gavel_dir / "traces/msr/seed=0/2869ce.trace", table)


def _bad_trace(tmp_path, gavel_dir, bad_line):
    good = (gavel_dir / "traces/physical_cluster/max_min_fairness.trace").read_text().splitlines()
    p = tmp_path / "bad.trace"
    p.write_text("\n".join(good[:3] + [bad_line] + good[3:6]) + "\n")
    return p


@pytest.mark.parametrize("mutate,match", [
    (lambda c: ["NoSuchNet (batch size 1)"] + c[1:], r"column 1 \(job_type\): 'NoSuchNet .* not in the throughput"),
    (lambda c: c[:9], "expected 10 tab-separated columns .* got 9"),
    (lambda c: c[:9] + ["-5"], r"column 10 \(arrival_time\): must be >= 0, got '-5'"),
    (lambda c: c[:5] + [""] + c[6:], r"column 6 \(total_steps\): empty"),
    (lambda c: c[:6] + ["x"] + c[7:], r"column 7 \(scale_factor\): must be a number, got 'x'"),
    (lambda c: c[:6] + ["3"] + c[7:], "with scale factor 3 is not in the throughput table .* runs at scale factors"),
])
def test_bad_trace_line_names_file_and_line(tmp_path, table, mutate, match, gavel_dir):
    good = (gavel_dir / "traces/physical_cluster/max_min_fairness.trace").read_text().splitlines()[0]
    p = _bad_trace(tmp_path, gavel_dir, "\t".join(mutate(good.split("\t"))))
    with pytest.raises(ClusterError, match=match) as info:
        read_trace(p, table)
    assert f"{p}:4:" in str(info.value)


def test_write_then_read_roundtrip(tmp_path, table):
    jobs = generate_jobs(table, 50, rate=5.6, seed=3, multi_gpu=True, priorities=True)
    write_trace(tmp_path / "g.trace", jobs)
    back = read_trace(tmp_path / "g.trace", table)
    assert [j.key for j in back] == [j.key for j in jobs]
    np.testing.assert_allclose([j.arrival_time for j in back], [j.arrival_time for j in jobs])
    assert {j.priority_weight for j in jobs} == {1.0, 5.0}


def test_generator_matches_paper_distribution(table):
    jobs = generate_jobs(table, 4000, rate=6.0, seed=0, multi_gpu=True)
    gaps = np.diff([j.arrival_time for j in jobs])
    assert gaps.mean() == pytest.approx(600, rel=0.06)
    scales = np.array([j.scale_factor for j in jobs])
    assert (scales == 1).mean() == pytest.approx(0.7, abs=0.03)
    assert (scales == 4).mean() == pytest.approx(0.15, abs=0.03)
    minutes = np.array([j.total_steps / table.iso[j.key][0] / 60 for j in jobs])
    assert minutes.min() >= 10 ** 1.5 - 1e-6 and minutes.max() <= 1e4 + 1e-6
    assert (minutes > 1000).mean() == pytest.approx(0.2, abs=0.03)


def test_yaml_specs(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "accelerators:\n  fast: {count: 2, per_server: 2, price: 3}\n  slow: 1\n"
        "throughputs:\n  mlp: {fast: 20, slow: 5}\nround_seconds: 2\n")
    spec = load_cluster(tmp_path / "c.yaml")
    assert spec.cluster.counts == {"fast": 2, "slow": 1} and spec.round_seconds == 2
    np.testing.assert_allclose(spec.table.row(("mlp", 1)), [20, 5])
    (tmp_path / "j.yaml").write_text("jobs:\n  - {type: mlp, steps: 10}\n  - {type: mlp, steps: 5, arrival: 1}\n")
    assert len(load_jobs(tmp_path / "j.yaml", spec.table)) == 2
    (tmp_path / "bad.yaml").write_text("jobs:\n  - {type: mlp, steps: 10}\n  - {type: cnn, steps: 5}\n")
    with pytest.raises(ClusterError, match=r"jobs\[1\]: unknown job type 'cnn'"):
        load_jobs(tmp_path / "bad.yaml", spec.table)
    (tmp_path / "neg.yaml").write_text("jobs:\n  - {type: mlp, steps: 10, arrival: -1}\n")
    with pytest.raises(ClusterError, match=r"neg.yaml: jobs\[0\].*arrival_time"):
        load_jobs(tmp_path / "neg.yaml", spec.table)
    with pytest.raises(ClusterError, match="count"):
        Cluster({"v100": -1})


def test_jobs_name_a_model_spec_or_a_command(tmp_path):
    from weft.cluster.tasks import (
        DEFAULT_DATASET,
        DEFAULT_MODEL,
        CommandTask,
        ModelTask,
    )

    (tmp_path / "c.yaml").write_text("accelerators: {x: 1}\nthroughputs: {m: {x: 1}}\n")
    table = load_cluster(tmp_path / "c.yaml").table
    (tmp_path / "j.yaml").write_text(
        "jobs:\n"
        "  - {type: m, steps: 5, model: models/net.py:build, dataset: data.py, batch: 8, lr: 0.1}\n"
        "  - {type: m, steps: 5, model: 'pkg.mod'}\n"
        "  - {type: m, steps: 5, command: \"python train.py --ckpt '{checkpoint}' -n {total_steps}\"}\n"
        "  - {type: m, steps: 5}\n")
    a, b, c, d = (j.task for j in load_jobs(tmp_path / "j.yaml", table))
    assert a == ModelTask(f"{tmp_path}/models/net.py:build", f"{tmp_path}/data.py", 8, 0.1, a.where)
    assert b.model == "pkg.mod" and b.dataset is None
    assert isinstance(c, CommandTask) and c.cwd == str(tmp_path)
    assert c.args == ("python", "train.py", "--ckpt", "{checkpoint}", "-n", "{total_steps}")
    assert (d.model, d.dataset) == (DEFAULT_MODEL, DEFAULT_DATASET)
    assert "jobs[0]" in a.where and "j.yaml" in a.where
    for item, match in [("{type: m, steps: 5, model: a.py, command: x}", r"'command' cannot be combined with \['model'\]"),
                        ("{type: m, steps: 5, command: []}", "command: empty"),
                        ("{type: m, steps: 5, command: {a: 1}}", "command: expected a string or a list"),
                        ("{type: m, steps: 5, model: 3}", "model: expected a spec"),
                        ("{type: m, steps: 5, batch: 0}", "batch: expected an integer >= 1"),
                        ("{type: m, steps: 5, lr: -1}", "lr: expected a number > 0"),
                        ("{type: m, steps: 5, modle: a.py}", r"unknown field\(s\) \['modle'\]")]:
        (tmp_path / "bad.yaml").write_text(f"jobs:\n  - {item}\n")
        with pytest.raises(ClusterError, match=r"bad.yaml: jobs\[0\]: .*" + match):
            load_jobs(tmp_path / "bad.yaml", table)


def test_seven_column_msr_rows_read_like_their_ten_column_conversion(table, gavel_dir):
    """The reference folder's 10-column file is the msr trace's known rows, converted."""
    ref = gavel_dir / "reference" / "2869ce.10col.trace"
    if not ref.exists():
        pytest.skip(f"{ref} not present")
    seven, skipped = load_trace(gavel_dir / "traces/msr/seed=0/2869ce.trace", table, skip_unknown=True)
    ten = read_trace(ref, table)
    assert sum(skipped.values()) == 179 and len(seven) == len(ten) == 354
    assert {s for _, s in skipped} >= {16, 32}
    assert [(j.job_id, j.key, j.arrival_time) for j in seven] == [(j.job_id, j.key, j.arrival_time) for j in ten]
    assert [int(j.total_steps) for j in seven] == [int(j.total_steps) for j in ten]


def test_seven_column_errors_name_the_msr_column(tmp_path, table):
    p = tmp_path / "m.trace"
    p.write_text("ResNet-18 (batch size 32)\tcmd\t--steps\t1\t1000\tsoon\t1\n")
    with pytest.raises(ClusterError, match=rf"{p}:1: column 6 \(arrival_time\): must be a number, got 'soon'"):
        read_trace(p, table)


def test_job_scale_factors_reach_the_policy(table):
    """An elastic job's allowed scale factors (and its throughput at each) are in the
    Problem a policy solves."""
    from weft.cluster.model import Cluster, Job
    from weft.cluster.policies.base import SchedulingPolicy
    from weft.cluster.problem import Allocation, build_problem
    from weft.cluster.simulator import simulate

    seen = []

    class Recorder(SchedulingPolicy):
        name = "recorder"

        def solve(self, prob):
            seen.append((list(prob.ids), prob.scale_options, prob.T_options))
            X = np.zeros((prob.n, prob.k))
            X[:, 0] = 1.0 / prob.n
            return Allocation(X)

    jobs = [Job(0, "ResNet-50 (batch size 64)", 1, 2000.0, scale_factors=(8, 1, 2, 4)),
            Job(1, "A3C", 1, 500.0)]
    cluster = Cluster({"v100": 8, "k80": 8})
    prob = build_problem(jobs, cluster, table)
    assert prob.scale_options == [(1, 2, 4, 8), (1,)]
    np.testing.assert_allclose(prob.T_options[0][4], table.row(("ResNet-50 (batch size 64)", 4), ["v100", "k80"]))
    simulate(jobs, cluster, table, Recorder(), 360.0)
    assert seen and seen[0][0] == [0, 1] and seen[0][1] == [(1, 2, 4, 8), (1,)]
    with pytest.raises(ClusterError, match="scale_factors .* include scale_factor 2"):
        Job(2, "A3C", 2, 10.0, scale_factors=(1, 4))
