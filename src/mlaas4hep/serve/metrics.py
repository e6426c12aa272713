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
The per-request series are plain Python numbers updated on the event-loop
thread (no lock: a few hundred nanoseconds per request) and turned into
Prometheus families only when ``/metrics`` is scraped; the per-batch ones are
ordinary ``prometheus_client`` metrics.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ..io.sources import RETRIES
from .tritonmetrics import TritonCounts

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


@dataclass
class ModelCounts:
    """What Triton's model statistics report for one model (:mod:`.statistics`), kept as plain numbers.

    Successes (count and time) live in the latency histogram; here the rest:
    failed requests and their time, the wall-clock time of the last request,
    onnxruntime calls and their rows, and per request that reached one its wait
    in the batcher and the time of its call (Triton counts these per request).
    """

    last_ms: int = 0
    fail: int = 0
    fail_s: float = 0.0
    batches: int = 0
    rows: int = 0
    requests: int = 0  # requests that reached a predict call
    queue_s: float = 0.0  # their waits in the batcher, summed
    compute_s: float = 0.0  # per request, the time of its predict call, summed


@dataclass
class Observation:
    model: str = "_unknown"
    version: str = ""
    status: int = 500


class Metrics:
    """The server's metrics. ``status_of(error or None)`` gives the ``status`` label of an
    inference request's outcome (the app passes the HTTP table's, so gRPC and HTTP requests
    are counted alike)."""

    def __init__(self, status_of: Callable[[BaseException | None], int]) -> None:
        self.status_of = status_of
        self.registry = CollectorRegistry()
        r = self.registry
        self.batch = Histogram(
            "mlaas4hep_batch_size_rows",
            "Rows per onnxruntime call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "mlaas4hep_queue_seconds",
            "Wait of the oldest request of a batch",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.loaded = Gauge("mlaas4hep_models_loaded", "onnxruntime sessions in memory", registry=r)
        self._http: dict[tuple[str, str, str], int] = {}
        self._infer: dict[tuple[str, str], int] = {}
        self._latency: dict[str, list[float]] = {}  # model -> counts per bucket (+Inf last), then the sum
        self.counts: dict[str, ModelCounts] = {}  # model -> Triton's statistics
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.triton = TritonCounts()  # Triton's names, per model version (see .tritonmetrics)
        r.register(_RequestCollector(self))

    def _child(self, metric: Any, *labels: str) -> Any:  # a labelled prometheus_client metric
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def http_request(self, route: str, method: str, status: int) -> None:
        key = (route, method, str(status))
        self._http[key] = self._http.get(key, 0) + 1

    def model_counts(self, model: str) -> ModelCounts:
        c = self.counts.get(model)
        if c is None:
            c = self.counts[model] = ModelCounts()
        return c

    def latency(self, model: str) -> tuple[int, float]:
        """Successful inference requests of ``model`` and their summed latency in seconds."""
        h = self._latency.get(model)
        return (0, 0.0) if h is None else (int(sum(h[:-1])), h[-1])

    def inference(self, model: str, status: int, seconds: float) -> None:
        key = (model, str(status))
        self._infer[key] = self._infer.get(key, 0) + 1
        if status < 400:
            h = self._latency.get(model)
            if h is None:
                h = self._latency[model] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            h[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            h[-1] += seconds
            c = self.counts.get(model) or self.model_counts(model)
        else:
            c = self.model_counts(model)
            c.fail += 1
            c.fail_s += seconds
        c.last_ms = int(time.time() * 1000)

    @contextmanager
    def observe(self) -> Iterator[Observation]:
        """Time one inference request and count it by model and status.

        The caller sets ``obs.model`` once it knows the model; the outcome's status
        is :attr:`status_of` of the error raised, or of none.
        """
        obs, t0 = Observation(), time.perf_counter()
        try:
            yield obs
            obs.status = self.status_of(None)
        except BaseException as err:
            obs.status = self.status_of(err)
            raise
        finally:
            seconds = time.perf_counter() - t0
            self.inference(obs.model, obs.status, seconds)
            if obs.version:  # the request reached a model version: Triton counts it
                self.triton.request((obs.model, obs.version), obs.status < 400, seconds)

    def batch_observer(self, model: str, version: str) -> Callable[[int, float, float, int, float], None]:
        """A callback for :class:`~mlaas4hep.serve.batching.Batcher` (its ``Observer``)."""
        batch, queue = self._child(self.batch, model), self._child(self.queue, model)
        c = self.model_counts(model)
        key, triton = (model, version), self.triton

        def observe(rows: int, queued: float, compute: float, requests: int, waited: float) -> None:
            batch.observe(rows)
            queue.observe(queued)
            triton.executed(key, rows, requests, waited, compute)
            c.batches += 1
            c.rows += rows
            c.requests += requests
            c.queue_s += waited
            c.compute_s += compute * requests

        return observe

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _RequestCollector:
    """Exports the per-request counts of :class:`Metrics` at scrape time."""

    def __init__(self, m: Metrics):
        self.m = m

    def collect(self) -> Iterator[Metric]:
        yield from self.m.triton.collect()
        http = CounterMetricFamily(
            "mlaas4hep_http_requests", "HTTP requests", labels=["route", "method", "status"]
        )
        for key, n in list(self.m._http.items()):
            http.add_metric(list(key), n)
        yield http
        # remote reads of predict_root that met a transient fault (storage restarting)
        yield CounterMetricFamily(
            "mlaas4hep_io_retries", "Remote reads retried after a transient fault", value=RETRIES.total
        )
        yield CounterMetricFamily(
            "mlaas4hep_io_retry_budget_exhausted",
            "Remote reads given up after their retry budget",
            value=RETRIES.gave_up,
        )
        infer = CounterMetricFamily(
            "mlaas4hep_inference_requests", "Inference requests", labels=["model", "status"]
        )
        for ikey, count in list(self.m._infer.items()):
            infer.add_metric(list(ikey), count)
        yield infer
        lat = HistogramMetricFamily(
            "mlaas4hep_request_latency_seconds", "Inference latency in the server", labels=["model"]
        )
        for model, h in list(self.m._latency.items()):
            cum, buckets = 0.0, []
            for le, hits in zip((*LATENCY_BUCKETS, float("inf")), h[:-1]):
                cum += hits
                buckets.append((floatToGoString(le), cum))
            lat.add_metric([model], buckets, sum_value=h[-1])
        yield lat
