"""Round-based mechanism and simulator."""


import numpy as np
import pytest

from weft.cluster.mechanism import RoundMechanism
from weft.cluster.model import Cluster, ClusterError, Job
from weft.cluster.policies import get_policy
from weft.cluster.simulator import simulate
from weft.cluster.throughputs import ThroughputTable
from weft.cluster.trace import read_trace


def test_time_fractions_follow_allocation():
    mech = RoundMechanism(Cluster({"a": 1, "b": 2}, per_server={"a": 1, "b": 2}), round_seconds=1)
    A = np.array([[0.5, 0.0], [0.5, 0.5], [0.0, 0.5], [0.0, 1.0]])
    units, scale, runnable = [10, 11, 12, 13], np.ones(4), A > 0
    got = np.zeros_like(A)
    for r in range(400):
        leases = mech.schedule_round(float(r), units, A, scale, runnable)
        used = {}
        for u, lease in leases.items():
            j = ["a", "b"].index(lease.accel_type)
            got[units.index(u), j] += 1
            used[lease.accel_type] = used.get(lease.accel_type, 0) + len(lease.workers)
            assert len(set(lease.workers)) == len(lease.workers)
        assert used.get("a", 0) <= 1 and used.get("b", 0) <= 2
    np.testing.assert_allclose(got / 400, A, atol=0.02)


def test_scale_factor_lease_extension_and_packing():
    cl = Cluster({"v": 8}, per_server={"v": 4})
    mech = RoundMechanism(cl, round_seconds=1)
    units, A = [1, 2, 3], np.array([[1.0], [1.0], [1.0]])
    scale = np.array([4, 2, 2])
    first = mech.schedule_round(0.0, units, A, scale, A > 0)
    assert set(first) == {1, 2, 3}
    assert len(set(first[1].servers)) == 1           # 4-GPU job on one server
    assert len(set(first[2].servers)) == 1
    all_workers = [w for lease in first.values() for w in lease.workers]
    assert sorted(all_workers) == list(range(8))
    second = mech.schedule_round(1.0, units, A, scale, A > 0)
    assert {u: l.workers for u, l in second.items()} == {u: l.workers for u, l in first.items()}
    # Where jobs really run (the executor's `holding`) wins over last round's leases.
    swapped = {1: first[1], 2: first[3], 3: first[2]}
    third = mech.schedule_round(2.0, units, A, scale, A > 0, holding=swapped)
    assert {u: l.workers for u, l in third.items()} == {u: l.workers for u, l in swapped.items()}


def test_job_never_in_two_units_and_scale_respected():
    cl = Cluster({"v": 3, "k": 2}, per_server={"v": 3, "k": 2})
    mech = RoundMechanism(cl, round_seconds=1)
    units = [1, 2, (1, 2), 3]
    A = np.array([[0.3, 0.2], [0.2, 0.3], [0.5, 0.0], [0.4, 0.4]])
    scale = np.array([2, 2, 2, 1])
    for r in range(50):
        leases = mech.schedule_round(float(r), units, A, scale, A > 0)
        jobs = [m for u in leases for m in RoundMechanism.members(u)]
        assert len(jobs) == len(set(jobs))
        for u, lease in leases.items():
            assert len(lease.workers) == scale[units.index(u)]


def _small_table():
    iso = {("fast_on_a", 1): np.array([10.0, 1.0]), ("fast_on_b", 1): np.array([1.0, 10.0]),
           ("big", 2): np.array([4.0, 4.0])}
    return ThroughputTable(["a", "b"], iso)


def test_simulator_completes_and_aware_beats_agnostic():
    table = _small_table()
    cl = Cluster({"a": 2, "b": 2}, per_server={"a": 2, "b": 2})
    jobs = [Job(i, ["fast_on_a", "fast_on_b"][i % 2], 1, 36000.0, arrival_time=600.0 * i) for i in range(12)]
    jobs.append(Job(12, "big", 2, 10000.0, arrival_time=100.0))
    res = {n: simulate(jobs, cl, table, get_policy(n), round_seconds=60)
           for n in ("max_min_fairness", "max_min_fairness_agnostic", "fifo", "min_makespan",
                     "finish_time_fairness", "max_throughput")}
    for r in res.values():
        assert set(r.jct) == set(range(13))
        assert all(v > 0 for v in r.jct.values())
        assert 0 < r.utilization <= 1
    assert res["max_min_fairness"].avg_jct < res["max_min_fairness_agnostic"].avg_jct


def test_window_flags_arrivals_that_run_out_and_later_arrivals_compete():
    # One accelerator; each job alone needs 10 rounds. Window = jobs 0-2.
    table = ThroughputTable(["a"], {("j", 1): np.array([1.0])})
    cl = Cluster({"a": 1})
    jobs = [Job(i, "j", 1, 600.0, arrival_time=400.0 * i) for i in range(40)]
    short = simulate(jobs[:3], cl, table, get_policy("max_min_fairness_agnostic"), 60, measure=(0, 3))
    open_ = simulate(jobs, cl, table, get_policy("max_min_fairness_agnostic"), 60, measure=(0, 3))
    assert short.extra["arrivals_ran_out"] and not open_.extra["arrivals_ran_out"]
    # Gavel keeps generating arrivals until the window is done: they share the
    # accelerator, so the window's jobs take longer than on an emptying cluster.
    assert open_.avg_jct > short.avg_jct
    assert set(open_.window) == {0, 1, 2} and {0, 1, 2} <= set(open_.jct)


def test_resolve_every_makes_new_jobs_wait_for_the_next_solve():
    table = ThroughputTable(["a"], {("j", 1): np.array([1.0])})
    cl = Cluster({"a": 3})
    jobs = [Job(0, "j", 1, 6000.0, 0.0), Job(1, "j", 1, 600.0, 60.0), Job(2, "j", 1, 600.0, 700.0)]
    pol = get_policy("max_min_fairness_agnostic")
    now = simulate(jobs, cl, table, pol, 60)
    late = simulate(jobs, cl, table, pol, 60, resolve_every=1920)
    # Re-solving on every change: each job starts at the first round boundary after it arrives.
    assert (now.jct[1], now.jct[2]) == pytest.approx((600.0, 620.0))
    # Gavel-style: no allocation for jobs 1 and 2 until 1920 s after the first solve.
    assert late.jct[1] == pytest.approx(1920.0 + 600.0 - 60.0)
    assert late.jct[2] == pytest.approx(1920.0 + 600.0 - 700.0)
    assert late.jct[0] == now.jct[0] == pytest.approx(6000.0)


def test_simulator_rejects_job_that_cannot_run():
    table = _small_table()
    with pytest.raises(ClusterError, match="needs 2 accelerators"):
        simulate([Job(0, "big", 2, 10.0)], Cluster({"a": 1, "b": 1}), table, get_policy("fifo"))


def test_replay_physical_trace_completes_every_job(gavel_dir):
    table = ThroughputTable.load(gavel_dir / "physical_cluster_throughputs.json", ["v100", "p100", "k80"])
    jobs = read_trace(gavel_dir / "traces/physical_cluster/max_min_fairness.trace", table)
    cl = Cluster({"v100": 8, "p100": 16, "k80": 24})      # Gavel's 48-GPU physical cluster
    res = simulate(jobs, cl, table, get_policy("max_min_fairness"))
    assert set(res.jct) == {j.job_id for j in jobs}
    for j in jobs:   # no job finishes faster than alone on its best type
        assert res.jct[j.job_id] >= j.total_steps / table.row(j.key, cl.types).max() - 1e-6
    assert res.makespan >= max(j.arrival_time for j in jobs)
