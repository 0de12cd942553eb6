"""Prometheus metrics of the service (`GET /metrics`), one registry per app.

    v2m_requests_total{endpoint, status}      requests by final HTTP status (499: client went away)
    v2m_request_seconds{endpoint}             time to the response's first byte
    v2m_stage_seconds{stage}                  upload, queue, decode, encode, curve, text, sampler, vae, write
    v2m_batch_size                            requests per sampler call
    v2m_queue_depth                           requests waiting for the device (tasks + prepared, not yet sampled)
    v2m_requests_in_flight                    admitted requests not finished
    v2m_uploads_in_progress                   requests whose body is still arriving
    v2m_ready                                 1 once the model is loaded and warmed up
    v2m_gpu_memory_allocated_bytes{device}    where the torch backend runs on CUDA
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class _Live:
    """Values read at scrape time: queue depth, GPU memory."""

    def __init__(self, engine: Callable[[], object | None]):
        self.engine = engine

    def collect(self):
        eng = self.engine()
        q = GaugeMetricFamily("v2m_queue_depth", "requests waiting for the device (queued tasks and prepared items)")
        q.add_metric([], float(eng.scheduler.depth) if eng is not None else 0.0)
        yield q
        g = GaugeMetricFamily("v2m_gpu_memory_allocated_bytes", "bytes allocated by the backend on each CUDA device",
                              labels=["device"])
        for dev, n in (eng.gpu_memory() if eng is not None else {}).items():
            g.add_metric([dev], float(n))
        yield g


class Metrics:
    def __init__(self, engine: Callable[[], object | None]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("v2m_requests", "requests by endpoint and final HTTP status", ["endpoint", "status"], registry=r)
        self.latency = Histogram("v2m_request_seconds", "time to the response's first byte", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.stages = Histogram("v2m_stage_seconds", "seconds per pipeline stage and request", ["stage"],
                                buckets=_LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("v2m_batch_size", "requests sampled together in one call", buckets=_BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge("v2m_requests_in_flight", "admitted requests not finished", registry=r)
        self.uploading = Gauge("v2m_uploads_in_progress", "requests whose body is still arriving", registry=r)
        self.ready = Gauge("v2m_ready", "1 once the model is loaded and warmed up", registry=r)
        r.register(_Live(engine))

    def stage(self, stage: str, seconds: float) -> None:
        self.stages.labels(stage).observe(seconds)

    def batch_size(self, n: int) -> None:
        self.batch.observe(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app, endpoints: tuple[str, ...]):
        """Pure ASGI middleware: count every request to `endpoints` by status, time its first byte."""

        async def wrapped(scope, receive, send):
            path = scope.get("path", "")
            if scope["type"] != "http" or path not in endpoints:
                return await app(scope, receive, send)
            status = {"code": 499}  # no response started: the client went away
            t0 = time.perf_counter()

            async def send_wrapper(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                    self.latency.labels(path).observe(time.perf_counter() - t0)
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                self.requests.labels(path, str(status["code"])).inc()

        return wrapped
