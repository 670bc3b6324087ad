"""Worker-process serving answers exactly as in-process serving; failures are named, not hung."""

import json
import os
import shutil
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from weft.serve import BundleError, Ensemble, ServeError, WorkerError, WorkerPool
from weft.serve.http import BackgroundServer, InferenceServer
from weft.serve.workers import assign


@pytest.fixture(scope="module")
def pool(digits_bundle):
    with WorkerPool(digits_bundle.path, workers=2, threads=1, timeout=60) as p:
        yield p


def test_cross_process_answers_equal_in_process(pool, digits_bundle, digits_sets):
    x = digits_sets[1].tensors[0]
    local = Ensemble(digits_bundle)
    assert [len(g) for g in pool.groups] == [1, 1]
    assert torch.equal(pool.predict_scores(x), local.predict_scores(x))
    for i in (0, 17, 200):  # single inputs
        assert torch.equal(pool.predict_scores(x[i]), local.predict_scores(x[i]))
        assert pool.predict(x[i]) == local.predict(x[i])
    assert pool.alive() is None


def test_http_over_workers(pool, digits_bundle, digits_sets):
    x = digits_sets[1].tensors[0][:6]
    with BackgroundServer(InferenceServer(pool)) as srv:
        req = urllib.request.Request(srv.url + "/predict", data=json.dumps({"inputs": x.tolist()}).encode())
        body = json.loads(urllib.request.urlopen(req, timeout=60).read())
        health = json.loads(urllib.request.urlopen(srv.url + "/health", timeout=10).read())
    assert body["labels"] == Ensemble(digits_bundle).predict(x).tolist()
    assert health["status"] == "ok" and health["workers"] == 2


def test_assignment_balances_flops():
    assert assign([5, 1, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4, 5]]
    assert assign([3, 3, 2, 2, 2], 2) == [[0, 2, 4], [1, 3]]
    with pytest.raises(ServeError, match="workers=3: must be between 1 and the bundle's 2 subnets"):
        assign([1, 1], 3)


def test_bad_bundle_or_worker_count_fails_before_any_worker_starts(tiny_bundle, tmp_path):
    with pytest.raises(ServeError, match="workers=4: must be between 1 and the bundle's 3 subnets"):
        WorkerPool(tiny_bundle.path, workers=4)
    broken = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, broken)
    f = next((broken / "members").iterdir())
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(BundleError, match=f"{f.name}: 50 bytes"):
        WorkerPool(broken, workers=1)


def test_a_killed_worker_is_reported(tiny_bundle, digits_sets):
    pool = WorkerPool(tiny_bundle.path, workers=1, threads=1, timeout=30)
    try:
        x = digits_sets[1].tensors[0][:3]
        assert torch.equal(pool.predict(x), Ensemble(tiny_bundle).predict(x))
        os.kill(pool.procs[0].pid, signal.SIGKILL)
        pool.procs[0].join(10)
        with pytest.raises(WorkerError, match="worker 0"):
            pool.predict(x)
        assert "worker 0" in pool.alive()
        with pytest.raises(WorkerError, match="broken"):
            pool.predict(x)
    finally:
        pool.close()
    assert not any(p.is_alive() for p in pool.procs)


@pytest.mark.parametrize("spin", [0.0, 0.002])
def test_shared_memory_and_pipe_paths_answer_like_in_process(tiny_bundle, digits_sets, spin):
    """Batches up to shm_batch go through shared memory, larger ones over the pipe; single
    inputs, back-to-back requests and both paths give the in-process answers bit for bit."""
    x = digits_sets[1].tensors[0][:7]
    local = Ensemble(tiny_bundle)
    with WorkerPool(tiny_bundle.path, workers=2, threads=1, timeout=30, shm_batch=3, spin=spin) as pool:
        for n in (1, 3, 2, 7, 1, 4, 3):  # shm, shm (full), shm, pipe, shm, pipe, shm
            assert torch.equal(pool.predict_scores(x[:n]), local.predict_scores(x[:n])), n
        for i in range(7):
            assert torch.equal(pool.predict_scores(x[i]), local.predict_scores(x[i]))
        assert pool.alive() is None
    with WorkerPool(tiny_bundle.path, workers=1, threads=1, timeout=30, shm_batch=0) as pool:  # pipe only
        assert torch.equal(pool.predict_scores(x), local.predict_scores(x))


def test_a_worker_killed_mid_request_is_reported(tiny_bundle, digits_sets):
    """The worker is stopped, a request is sent, then it is killed before answering: the
    waiting request fails naming the worker and the request, and the pool stays broken."""
    x = digits_sets[1].tensors[0][0]
    with WorkerPool(tiny_bundle.path, workers=2, threads=1, timeout=30) as pool:
        pool.predict(x)
        pid = pool.procs[1].pid
        os.kill(pid, signal.SIGSTOP)
        with ThreadPoolExecutor(1) as ex:
            fut = ex.submit(pool.predict, x)
            time.sleep(0.3)
            assert not fut.done()
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(WorkerError, match=rf"worker 1 \(pid {pid}\) exited with code -9 during request 2"):
                fut.result(timeout=30)
        with pytest.raises(WorkerError, match="worker pool is broken: worker 1"):
            pool.predict(x)


def test_a_silent_worker_times_out(tiny_bundle, digits_sets):
    x = digits_sets[1].tensors[0][0]
    pool = WorkerPool(tiny_bundle.path, workers=1, threads=1, timeout=1.0)
    try:
        pool.predict(x)
        os.kill(pool.procs[0].pid, signal.SIGSTOP)
        with pytest.raises(WorkerError, match="worker 0 did not answer request 2 within 1 s"):
            pool.predict(x)
    finally:
        os.kill(pool.procs[0].pid, signal.SIGKILL)
        pool.close()


def test_bad_transport_settings(tiny_bundle):
    with pytest.raises(ServeError, match="shm_batch=-1"):
        WorkerPool(tiny_bundle.path, workers=1, shm_batch=-1)
