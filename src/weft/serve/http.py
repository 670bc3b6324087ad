"""HTTP front end (aiohttp): JSON predictions with request batching, health and metrics.

    POST /predict   {"inputs": [x, ...]} or {"input": x}, each x nested lists of the bundle's
                    input shape; optional "scores": true. Answers {"labels", "confidences"
                    [, "names"] [, "scores"]}; 400 names what is wrong with a bad request.
    GET  /health    200 {"status": "ok", ...}, or 503 with the reason (a worker down, shutting down)
    GET  /metrics   Prometheus text: requests by status, inputs, batches, queue depth, latency

Requests wait in a bounded queue; one batcher takes what is queued (what arrived while the
predictor was busy), waits up to `max_delay` seconds for more (default 0: no added latency), at
most `max_batch` inputs, and runs the predictor in a worker thread. A full
queue answers 503 at once with Retry-After. On stop the server stops accepting connections,
answers what it has queued, then closes the predictor.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from aiohttp import web

from weft.serve.errors import ServeError


@dataclass
class ServerConfig:
    max_batch: int = 32         # inputs per predictor call
    max_delay: float = 0.0      # seconds the first queued request waits for company
    queue_size: int = 256       # requests waiting; more are answered 503
    max_inputs: int = 1024      # inputs in one request
    request_timeout: float = 30.0
    shutdown_timeout: float = 10.0

    def check(self) -> None:
        for name in ("max_batch", "queue_size", "max_inputs"):
            if int(getattr(self, name)) < 1:
                raise ServeError(f"{name}={getattr(self, name)}: expected >= 1")
        if self.max_delay < 0 or self.request_timeout <= 0 or self.shutdown_timeout < 0:
            raise ServeError(f"max_delay={self.max_delay}, request_timeout={self.request_timeout}, "
                             f"shutdown_timeout={self.shutdown_timeout}: expected >= 0, > 0, >= 0")


class BadRequest(ServeError):
    pass


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future


def parse_request(body: bytes, input_shape: tuple[int, ...], max_inputs: int) -> tuple[np.ndarray, bool]:
    """([N, *input_shape] float32 inputs, whether scores were asked for); BadRequest says why not."""
    shape = list(input_shape)
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(req, dict) or ("inputs" in req) == ("input" in req):
        raise BadRequest(f"expected a JSON object with 'inputs' (a list of inputs of shape {shape}) "
                         f"or 'input' (one input of shape {shape})")
    key = "inputs" if "inputs" in req else "input"
    try:
        x = np.asarray(req[key], dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"'{key}' is not a numeric array ({exc})") from None
    if key == "inputs":
        ok = x.ndim == len(shape) + 1 and list(x.shape[1:]) == shape and x.shape[0] > 0
    else:
        ok = list(x.shape) == shape
    if not ok:
        raise BadRequest(f"'{key}' has shape {list(x.shape)}, expected "
                         f"{['N', *shape] if key == 'inputs' else shape}")
    if key == "input":
        x = x[None]
    if len(x) > max_inputs:
        raise BadRequest(f"'inputs' holds {len(x)} inputs; at most {max_inputs} per request")
    if not np.isfinite(x).all():
        raise BadRequest(f"'{key}' holds non-finite or missing values")
    scores = req.get("scores", False)
    if not isinstance(scores, bool):
        raise BadRequest(f"'scores' is {scores!r}, expected true or false")
    return x, scores


class Metrics:
    def __init__(self, window: int = 4096):
        self.codes: collections.Counter = collections.Counter()
        self.inputs = self.batches = self.batch_inputs = 0
        self.latency: collections.deque = collections.deque(maxlen=window)
        self.latency_sum, self.latency_count = 0.0, 0
        self.started = time.time()

    def request(self, code: int, seconds: float) -> None:
        self.codes[code] += 1
        self.latency.append(seconds)
        self.latency_sum += seconds
        self.latency_count += 1

    def text(self, queue_depth: int, queue_size: int, up: bool) -> str:
        lines = ["# TYPE weft_serve_requests_total counter"]
        lines += [f'weft_serve_requests_total{{code="{c}"}} {n}' for c, n in sorted(self.codes.items())]
        lat = sorted(self.latency)
        lines.append("# TYPE weft_serve_request_seconds summary")
        for q in (0.5, 0.9, 0.99):
            v = lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
            lines.append(f'weft_serve_request_seconds{{quantile="{q}"}} {v:.6g}')
        lines += [f"weft_serve_request_seconds_sum {self.latency_sum:.6g}",
                  f"weft_serve_request_seconds_count {self.latency_count}",
                  "# TYPE weft_serve_inputs_total counter", f"weft_serve_inputs_total {self.inputs}",
                  "# TYPE weft_serve_batches_total counter", f"weft_serve_batches_total {self.batches}",
                  "# TYPE weft_serve_batch_inputs_total counter", f"weft_serve_batch_inputs_total {self.batch_inputs}",
                  "# TYPE weft_serve_queue_depth gauge", f"weft_serve_queue_depth {queue_depth}",
                  "# TYPE weft_serve_queue_capacity gauge", f"weft_serve_queue_capacity {queue_size}",
                  "# TYPE weft_serve_up gauge", f"weft_serve_up {int(up)}",
                  "# TYPE weft_serve_uptime_seconds gauge",
                  f"weft_serve_uptime_seconds {time.time() - self.started:.3f}"]
        return "\n".join(lines) + "\n"


class InferenceServer:
    """Serves any predictor with `predict_scores(batch)`, `input_shape`, `num_classes`."""

    def __init__(self, predictor, config: ServerConfig | None = None, class_names: list[str] | None = None):
        self.predictor = predictor
        self.cfg = config or ServerConfig()
        self.cfg.check()
        self.names = class_names
        self.metrics = Metrics()
        self.closing = False
        self.queue: asyncio.Queue | None = None
        self._carry: _Item | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="weft-serve-predict")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/predict", self.predict)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_page)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app) -> None:
        self.queue = asyncio.Queue(self.cfg.queue_size)
        self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    async def _stop(self, app) -> None:
        self._batcher.cancel()
        try:
            await self._batcher
        except asyncio.CancelledError:
            pass
        while not self.queue.empty():  # nothing should remain: handlers were awaited first
            item = self.queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(ServeError("server stopped"))
        self._executor.shutdown(wait=True)

    def _unhealthy(self) -> str | None:
        if self.closing:
            return "shutting down"
        alive = getattr(self.predictor, "alive", None)
        return alive() if alive else None

    @staticmethod
    def _json(status: int, obj: dict, **headers) -> web.Response:
        return web.json_response(obj, status=status, headers=headers or None)

    async def health(self, request) -> web.Response:
        why = self._unhealthy()
        body = {"status": "ok" if why is None else "unavailable", "queue": self.queue.qsize(),
                "queue_size": self.cfg.queue_size, "input_shape": list(self.predictor.input_shape),
                "classes": self.predictor.num_classes, "workers": getattr(self.predictor, "workers", 0)}
        if why:
            body["reason"] = why
        return self._json(200 if why is None else 503, body)

    async def metrics_page(self, request) -> web.Response:
        return web.Response(text=self.metrics.text(self.queue.qsize(), self.cfg.queue_size, self._unhealthy() is None),
                            content_type="text/plain", charset="utf-8")

    async def predict(self, request) -> web.Response:
        t0 = time.perf_counter()
        resp = await self._predict(request)
        self.metrics.request(resp.status, time.perf_counter() - t0)
        return resp

    async def _predict(self, request) -> web.Response:
        if self.closing:
            return self._json(503, {"error": "server is shutting down"})
        try:
            x, want_scores = parse_request(await request.read(), tuple(self.predictor.input_shape),
                                           self.cfg.max_inputs)
        except BadRequest as exc:
            return self._json(400, {"error": str(exc)})
        item = _Item(x, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return self._json(503, {"error": f"overloaded: {self.cfg.queue_size} requests already queued; "
                                              "retry later"}, **{"Retry-After": "1"})
        try:
            scores = await asyncio.wait_for(item.future, self.cfg.request_timeout)
        except asyncio.TimeoutError:
            return self._json(504, {"error": f"no answer within {self.cfg.request_timeout:g} s"})
        except Exception as exc:  # noqa: BLE001 - a failed prediction is this request's 500
            return self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
        conf, labels = scores.max(1)
        out = {"labels": labels.tolist(), "confidences": [round(c, 6) for c in conf.tolist()]}
        if self.names:
            out["names"] = [self.names[i] for i in out["labels"]]
        if want_scores:
            out["scores"] = scores.tolist()
        return self._json(200, out)

    async def _next(self, timeout: float | None) -> _Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout is not None and timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._next(None)]
            rows = len(batch[0].x)
            deadline = loop.time() + self.cfg.max_delay
            while rows < self.cfg.max_batch:
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                if rows + len(item.x) > self.cfg.max_batch:
                    self._carry = item
                    break
                batch.append(item)
                rows += len(item.x)
            batch = [it for it in batch if not it.future.done()]  # drop requests that timed out
            if not batch:
                continue
            x = torch.from_numpy(np.concatenate([it.x for it in batch]))
            self.metrics.batches += 1
            self.metrics.batch_inputs += len(x)
            try:
                scores = await loop.run_in_executor(self._executor, self.predictor.predict_scores, x)
            except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            self.metrics.inputs += len(x)
            start = 0
            for it in batch:
                if not it.future.done():
                    it.future.set_result(scores[start:start + len(it.x)])
                start += len(it.x)

    async def serve(self, host: str, port: int, stop: asyncio.Event, ready=None, access_log: bool = False) -> None:
        """Listen until `stop` is set, then shut down gracefully; `ready(url)` once listening."""
        runner = web.AppRunner(self.app(), handle_signals=False, shutdown_timeout=self.cfg.shutdown_timeout,
                               access_log=web.access_logger if access_log else None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0][1]
            if ready:
                ready(f"http://{host}:{bound}")
            await stop.wait()
            self.closing = True
        finally:
            await runner.cleanup()


class BackgroundServer:
    """An InferenceServer on its own event loop thread (tests, benchmarks, notebooks)."""

    def __init__(self, server: InferenceServer, host: str = "127.0.0.1", port: int = 0):
        self.server, self.host, self.port = server, host, port
        self.url: str | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="weft-serve-http", daemon=True)

    def _run(self) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.serve(self.host, self.port, self._stop, self._set_url)

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - surfaced by start()
            self._error = exc
            self._ready.set()

    def _set_url(self, url: str) -> None:
        self.url = url
        self._ready.set()

    def start(self, timeout: float = 30.0) -> str:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise ServeError(f"HTTP server did not start on {self.host}:{self.port}: {self._error}")
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
