"""The HTTP server on 127.0.0.1: answers, named 400s, batching, 503 on overload, graceful stop."""

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from weft.serve import Ensemble
from weft.serve.http import BackgroundServer, InferenceServer, ServerConfig

TIMEOUT = 30


class Gated:
    """Wraps a predictor: each call waits for `release` (holds requests in flight on purpose)."""

    def __init__(self, inner):
        self.inner, self.release, self.entered = inner, threading.Event(), threading.Event()
        self.input_shape, self.num_classes = inner.input_shape, inner.num_classes
        self.reason = None

    def alive(self):
        return self.reason

    def predict_scores(self, x):
        self.entered.set()
        assert self.release.wait(TIMEOUT)
        return self.inner.predict_scores(x)


def post(url, body, timeout=TIMEOUT):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/predict", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), e.headers


def get(url, path):
    try:
        with urllib.request.urlopen(url + path, timeout=TIMEOUT) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(cond, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def in_thread(fn, *args):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn(*args)), daemon=True)
    t.start()
    return t, out


@pytest.fixture(scope="module")
def server(tiny_bundle):
    with BackgroundServer(InferenceServer(Ensemble(tiny_bundle), ServerConfig(max_inputs=4, max_delay=0.001))) as s:
        yield s


def test_predictions_match_the_python_api(server, tiny_bundle, digits_sets):
    x = digits_sets[1].tensors[0][:4]
    e = Ensemble(tiny_bundle)
    code, body, _ = post(server.url, {"inputs": x.tolist(), "scores": True})
    assert code == 200
    assert body["labels"] == e.predict(x).tolist()
    torch.testing.assert_close(torch.tensor(body["scores"]), e.predict_scores(x))
    assert body["confidences"] == pytest.approx(e.predict_scores(x).max(1).values.tolist(), abs=1e-6)
    code, one, _ = post(server.url, {"input": x[2].tolist()})
    assert code == 200 and one["labels"] == [body["labels"][2]] and "scores" not in one


EIGHT = [[0.0] * 8] * 8


@pytest.mark.parametrize("body, message", [
    (b"{not json", "body is not valid JSON"),
    ([1, 2], "expected a JSON object with 'inputs'"),
    ({"inputs": [[EIGHT]], "input": [EIGHT]}, "expected a JSON object with 'inputs'"),
    ({"inputs": "abc"}, "'inputs' is not a numeric array"),
    ({"inputs": [[EIGHT], [[[0.0] * 7] * 8]]}, "'inputs' is not a numeric array"),
    ({"inputs": [EIGHT]}, r"'inputs' has shape \[1, 8, 8\], expected \['N', 1, 8, 8\]"),
    ({"inputs": []}, r"'inputs' has shape \[0\]"),
    ({"input": EIGHT}, r"'input' has shape \[8, 8\], expected \[1, 8, 8\]"),
    ({"input": [[[None] * 8] * 8]}, "non-finite or missing values"),
    ({"inputs": [[EIGHT]] * 5}, "'inputs' holds 5 inputs; at most 4 per request"),
    ({"input": [EIGHT], "scores": "yes"}, "'scores' is 'yes', expected true or false"),
])
def test_malformed_requests_get_a_named_400_and_the_server_keeps_serving(server, body, message):
    code, err, _ = post(server.url, body)
    assert code == 400
    assert re.search(message, err["error"]), err
    code, ok, _ = post(server.url, {"input": [EIGHT]})
    assert code == 200 and len(ok["labels"]) == 1


def test_wrong_method_and_path(server):
    assert get(server.url, "/predict")[0] == 405
    assert get(server.url, "/nope")[0] == 404


def test_health_and_metrics(server):
    code, text = get(server.url, "/health")
    health = json.loads(text)
    assert code == 200 and health["status"] == "ok" and health["input_shape"] == [1, 8, 8]
    post(server.url, {"input": [EIGHT]})
    post(server.url, b"nope")
    code, text = get(server.url, "/metrics")
    assert code == 200
    metrics = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert int(metrics['weft_serve_requests_total{code="200"}']) >= 1
    assert int(metrics['weft_serve_requests_total{code="400"}']) >= 1
    assert float(metrics['weft_serve_request_seconds{quantile="0.5"}']) > 0
    assert metrics["weft_serve_up"] == "1" and metrics["weft_serve_queue_capacity"] == "256"


def _queued(url):
    return json.loads(get(url, "/health")[1])["queue"]


def test_batching_overload_and_unhealthy(tiny_bundle, digits_sets):
    gated = Gated(Ensemble(tiny_bundle))
    x = digits_sets[1].tensors[0][:4]
    cfg = ServerConfig(max_batch=2, max_delay=0.0, queue_size=3)
    with BackgroundServer(InferenceServer(gated, cfg)) as srv:
        first = in_thread(post, srv.url, {"input": x[0].tolist()})
        assert gated.entered.wait(TIMEOUT)  # request 0 is in the predictor, held
        rest = []
        for i in (1, 2, 3):
            rest.append(in_thread(post, srv.url, {"input": x[i].tolist()}))
            wait_for(lambda i=i: _queued(srv.url) == i, f"{i} queued requests")
        code, err, headers = post(srv.url, {"input": x[0].tolist()})
        assert code == 503 and "overloaded: 3 requests already queued" in err["error"]
        assert headers["Retry-After"] == "1"
        gated.reason = "worker 1 exited with code -9"
        code, text = get(srv.url, "/health")
        assert code == 503 and json.loads(text)["reason"] == "worker 1 exited with code -9"
        gated.release.set()
        answers = []
        for t, out in [first] + rest:
            t.join(TIMEOUT)
            code, body, _ = out["r"]
            assert code == 200
            answers += body["labels"]
        assert answers == Ensemble(tiny_bundle).predict(x).tolist()
        m = srv.server.metrics
        assert (m.batches, m.batch_inputs) == (3, 4)  # [0], [1, 2], [3]: at most max_batch inputs each


def _refused(url) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def test_graceful_shutdown_answers_requests_in_flight(tiny_bundle, digits_sets):
    gated = Gated(Ensemble(tiny_bundle))
    x = digits_sets[1].tensors[0][:2]
    srv = BackgroundServer(InferenceServer(gated, ServerConfig(max_delay=0.0)))
    srv.start()
    a = in_thread(post, srv.url, {"input": x[0].tolist()})
    assert gated.entered.wait(TIMEOUT)
    b = in_thread(post, srv.url, {"input": x[1].tolist()})
    wait_for(lambda: _queued(srv.url) == 1, "a queued request")
    stopper = threading.Thread(target=srv.stop, daemon=True)
    stopper.start()
    wait_for(lambda: _refused(srv.url), "the server to stop listening")
    assert stopper.is_alive()  # still waiting for the two requests
    gated.release.set()
    for t, out in (a, b):
        t.join(TIMEOUT)
        assert out["r"][0] == 200
    stopper.join(TIMEOUT)
    assert not stopper.is_alive() and _refused(srv.url)


def test_the_first_request_waits_up_to_max_delay_for_company(tiny_bundle, digits_sets):
    x = digits_sets[1].tensors[0][:2]
    cfg = ServerConfig(max_batch=2, max_delay=20.0)  # a full batch goes at once; 20 s only bounds a slow test
    with BackgroundServer(InferenceServer(Ensemble(tiny_bundle), cfg)) as srv:
        a = in_thread(post, srv.url, {"input": x[0].tolist()})
        wait_for(lambda: srv.server.queue.qsize() == 0 and srv.server.metrics.codes == {}, "the batcher to take it")
        code, _, _ = post(srv.url, {"input": x[1].tolist()})
        a[0].join(TIMEOUT)
        assert code == 200 and a[1]["r"][0] == 200
        m = srv.server.metrics
        assert (m.batches, m.batch_inputs) == (1, 2)
