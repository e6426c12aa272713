"""Prometheus metrics, served at ``/metrics`` in the text exposition format.

* ``mlaas4hep_http_requests_total{route,method,status}``: every request;
* ``mlaas4hep_inference_requests_total{model,status}``: inference requests per model;
* ``mlaas4hep_request_latency_seconds{model}``: time from receiving an inference
  request to having its answer (histogram);
* ``mlaas4hep_batch_size_rows{model}``: rows per onnxruntime call (histogram);
* ``mlaas4hep_queue_seconds{model}``: how long the oldest request of a batch
  waited in the dynamic batcher (histogram);
* ``mlaas4hep_models_loaded``: sessions in memory.

Each app has its own registry (tests run several servers in one process).
Label children are cached, so the cost per request is a dictionary look-up
and an atomic add.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = Counter("mlaas4hep_http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.infer = Counter("mlaas4hep_inference_requests", "Inference requests", ["model", "status"], registry=r)
        self.latency = Histogram(
            "mlaas4hep_request_latency_seconds", "Inference latency in the server", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch = Histogram(
            "mlaas4hep_batch_size_rows", "Rows per onnxruntime call", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue = Histogram(
            "mlaas4hep_queue_seconds", "Wait of the oldest request of a batch", ["model"],
            buckets=QUEUE_BUCKETS, registry=r,
        )
        self.loaded = Gauge("mlaas4hep_models_loaded", "onnxruntime sessions in memory", registry=r)
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels):
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def http_request(self, route: str, method: str, status: int) -> None:
        self._child(self.http, route, method, str(status)).inc()

    def inference(self, model: str, status: int, seconds: float) -> None:
        self._child(self.infer, model, str(status)).inc()
        if status < 400:
            self._child(self.latency, model).observe(seconds)

    def batch_observer(self, model: str) -> Callable[[int, float], None]:
        """A callback for :class:`~mlaas4hep.serve.batching.Batcher`."""
        batch, queue = self._child(self.batch, model), self._child(self.queue, model)

        def observe(rows: int, queued: float) -> None:
            batch.observe(rows)
            queue.observe(queued)

        return observe

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
