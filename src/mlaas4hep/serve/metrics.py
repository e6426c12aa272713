"""Prometheus metrics, served at ``/metrics`` in the text exposition format.

* ``mlaas4hep_http_requests_total{route,method,status}``: every request;
* ``mlaas4hep_inference_requests_total{model,status}``: inference requests per model;
* ``mlaas4hep_request_latency_seconds{model}``: time from receiving an inference
  request to having its answer (histogram);
* ``mlaas4hep_batch_size_rows{model}``: rows per onnxruntime call (histogram);
* ``mlaas4hep_queue_seconds{model}``: how long the oldest request of a batch
  waited in the dynamic batcher (histogram);
* ``mlaas4hep_models_loaded``: sessions in memory;
* ``mlaas4hep_request_bytes_pending`` and ``mlaas4hep_requests_waiting_for_intake``: the
  request bytes held now within ``--max-pending-mb``, and the requests waiting for room
  (:mod:`.intake`);
* ``mlaas4hep_request_body_timeouts_total{protocol}``: requests (``http``) and gRPC calls
  (``grpc``) cut off because their body stopped arriving for ``--body-timeout`` seconds
  (:mod:`.bodytimer`);
* ``mlaas4hep_request_head_timeouts_total``: HTTP connections closed because a request's
  head (request line and headers) did not arrive whole within ``--head-timeout`` seconds;
* Triton's ``nv_inference_*`` per model and version (:mod:`.tritonmetrics`).

Each app has its own :class:`Metrics` (tests run several servers in one
process). Every series is a plain Python number updated on the event-loop
thread (no lock: a few hundred nanoseconds per request), turned into
Prometheus families only when ``/metrics`` is scraped. So the whole state is a
small JSON-able :meth:`Metrics.snapshot`: with ``--workers N`` each process
publishes its snapshot every second (:mod:`.metricsshare`) and the process
that answers a scrape adds up all of them, so one scrape reports every worker.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
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


class Observation:
    """One inference request being timed: a context manager that counts it when it ends.

    The caller sets ``model`` (and ``version``) once it knows them; the
    outcome's status is ``metrics.status_of`` of the error raised, or of none.
    A plain class rather than a generator: it is entered on every request.
    """

    __slots__ = ("metrics", "model", "status", "t0", "version")

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.model, self.version, self.status = "_unknown", "", 500

    def __enter__(self) -> Observation:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> None:
        seconds = time.perf_counter() - self.t0
        m = self.metrics
        self.status = m.status_of(err)
        m.inference(self.model, self.status, seconds)
        if self.version:  # the request reached a model version: Triton counts it
            m.triton.request((self.model, self.version), self.status < 400, seconds)


def _observe(hists: dict[str, list[float]], key: str, buckets: tuple[float, ...], value: float) -> None:
    """Count ``value`` in the histogram ``hists[key]``: counts per bucket (+Inf last), then the sum."""
    h = hists.get(key)
    if h is None:
        h = hists[key] = [0.0] * (len(buckets) + 2)
    h[bisect_left(buckets, value)] += 1
    h[-1] += value


class Metrics:
    """The server's metrics. ``status_of(error or None)`` gives the ``status`` label of an
    inference request's outcome (the app passes the HTTP table's, so gRPC and HTTP requests
    are counted alike). ``peers()``, when set, gives the snapshots of the other worker
    processes, added to this one's at every scrape."""

    def __init__(self, status_of: Callable[[BaseException | None], int]) -> None:
        self.status_of = status_of
        self.http: dict[tuple[str, str, str], int] = {}
        self.infer: dict[tuple[str, str], int] = {}
        self.latency: dict[str, list[float]] = {}  # model -> counts per bucket (+Inf last), then the sum
        self.batch: dict[str, list[float]] = {}
        self.queue: dict[str, list[float]] = {}
        self.counts: dict[str, ModelCounts] = {}  # model -> Triton's statistics
        self.triton = TritonCounts()  # Triton's names, per model version (see .tritonmetrics)
        self.loaded = 0  # sessions in memory
        self.retries = (0, 0)  # of another process (this one's are read from the io layer)
        #: (bytes held, requests waiting) of this process's intake, read at scrape time
        self.intake: Callable[[], tuple[int, int]] | None = None
        self.intake_absorbed = (0, 0)  # of other processes
        self.body_timeouts: dict[str, int] = {}  # protocol -> bodies cut off (see .bodytimer)
        self.peers: Callable[[], list[dict[str, Any]]] | None = None
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

    def http_request(self, route: str, method: str, status: int) -> None:
        key = (route, method, str(status))
        self.http[key] = self.http.get(key, 0) + 1

    def body_timeout(self, protocol: str) -> None:
        """A request's body stopped arriving and was cut off (``protocol``: http or grpc), or
        (``"head"``) an HTTP request's head did not arrive in time."""
        self.body_timeouts[protocol] = self.body_timeouts.get(protocol, 0) + 1

    def model_counts(self, model: str) -> ModelCounts:
        c = self.counts.get(model)
        if c is None:
            c = self.counts[model] = ModelCounts()
        return c

    def latency_of(self, model: str) -> tuple[int, float]:
        """Successful inference requests of ``model`` and their summed latency in seconds."""
        h = self.latency.get(model)
        return (0, 0.0) if h is None else (int(sum(h[:-1])), h[-1])

    def inference(self, model: str, status: int, seconds: float) -> None:
        key = (model, str(status))
        self.infer[key] = self.infer.get(key, 0) + 1
        c = self.counts.get(model) or self.model_counts(model)
        if status < 400:
            _observe(self.latency, model, LATENCY_BUCKETS, seconds)
        else:
            c.fail += 1
            c.fail_s += seconds
        c.last_ms = int(time.time() * 1000)

    def observe(self) -> Observation:
        """Time one inference request and count it by model and status (``with metrics.observe() as obs``)."""
        return Observation(self)

    def batch_observer(self, model: str, version: str) -> Callable[[int, float, float, int, float], None]:
        """A callback for :class:`~mlaas4hep.serve.batching.Batcher` (its ``Observer``)."""
        c = self.model_counts(model)
        key, triton, batch, queue = (model, version), self.triton, self.batch, self.queue

        def observe(rows: int, queued: float, compute: float, requests: int, waited: float) -> None:
            _observe(batch, model, BATCH_BUCKETS, rows)
            _observe(queue, model, QUEUE_BUCKETS, queued)
            triton.executed(key, rows, requests, waited, compute)
            c.batches += 1
            c.rows += rows
            c.requests += requests
            c.queue_s += waited
            c.compute_s += compute * requests

        return observe

    # ------------------------------------------------------------ snapshots (several processes)
    def snapshot(self) -> dict[str, Any]:
        """Every number, JSON-able (lists of [key parts..., value])."""
        return {
            "http": [[*k, n] for k, n in list(self.http.items())],
            "infer": [[*k, n] for k, n in list(self.infer.items())],
            "latency": dict(self.latency),
            "batch": dict(self.batch),
            "queue": dict(self.queue),
            "counts": {m: asdict(c) for m, c in list(self.counts.items())},
            "triton": [[*k, asdict(c)] for k, c in list(self.triton.versions.items())],
            "pending": [[*k, n] for k, n in list(self.triton.pending.items())],
            "loaded": self.loaded,
            "retries": [RETRIES.total, RETRIES.gave_up],
            "intake": list(self.intake_now()),
            "body_timeouts": dict(self.body_timeouts),
        }

    def intake_now(self) -> tuple[int, int]:
        """Request bytes held and requests waiting for room: this process's and those absorbed."""
        mine = self.intake() if self.intake is not None else (0, 0)
        return mine[0] + self.intake_absorbed[0], mine[1] + self.intake_absorbed[1]

    def absorb(self, snap: dict[str, Any]) -> None:
        """Add another process's :meth:`snapshot` into this one (a merged view for a scrape)."""
        for *k, n in snap["http"]:
            self.http[tuple(k)] = self.http.get(tuple(k), 0) + n
        for *k, n in snap["infer"]:
            self.infer[tuple(k)] = self.infer.get(tuple(k), 0) + n
        for name in ("latency", "batch", "queue"):
            mine: dict[str, list[float]] = getattr(self, name)
            for model, h in snap[name].items():
                mine[model] = [a + b for a, b in zip(mine[model], h)] if model in mine else list(h)
        for model, c in snap["counts"].items():
            mc = self.model_counts(model)
            for f in fields(ModelCounts):
                mine_v, theirs = getattr(mc, f.name), c[f.name]
                setattr(mc, f.name, max(mine_v, theirs) if f.name == "last_ms" else mine_v + theirs)
        for model, version, c in snap["triton"]:
            vc = self.triton.of((model, version))
            for k, v in c.items():
                setattr(vc, k, getattr(vc, k) + v)
        for model, version, n in snap["pending"]:
            self.triton.pending[(model, version)] = self.triton.pending.get((model, version), 0) + n
        self.loaded += snap["loaded"]
        self.retries = (self.retries[0] + snap["retries"][0], self.retries[1] + snap["retries"][1])
        held, waiting = snap.get("intake", (0, 0))  # a worker of an older version has none
        self.intake_absorbed = (self.intake_absorbed[0] + held, self.intake_absorbed[1] + waiting)
        for protocol, n in snap.get("body_timeouts", {}).items():
            self.body_timeouts[protocol] = self.body_timeouts.get(protocol, 0) + n

    def merged(self) -> Metrics:
        """This process's numbers plus its peers' (``self`` when it has none).

        What a scrape and Triton's statistics report: with ``--workers N`` a client's
        connection reaches one worker, and it must see the server's numbers, not that
        worker's (perf_analyzer compares two readings, which may come from different workers).
        """
        if self.peers is None:
            return self
        merged = Metrics(self.status_of)
        merged.absorb(self.snapshot())
        merged.retries = (merged.retries[0] - RETRIES.total, merged.retries[1] - RETRIES.gave_up)
        for snap in self.peers():
            merged.absorb(snap)
        return merged

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text of this process, plus its peers' when it has some."""
        return generate_latest(self.merged().registry), CONTENT_TYPE_LATEST


def _histogram(name: str, doc: str, hists: dict[str, list[float]], buckets: tuple[float, ...]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["model"])
    for model, h in list(hists.items()):
        cum, out = 0.0, []
        for le, hits in zip((*buckets, float("inf")), h[:-1]):
            cum += hits
            out.append((floatToGoString(le), cum))
        family.add_metric([model], out, sum_value=h[-1])
    return family


class _Collector:
    """Exports the numbers of :class:`Metrics` at scrape time."""

    def __init__(self, m: Metrics):
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield from m.triton.collect()
        http = CounterMetricFamily(
            "mlaas4hep_http_requests", "HTTP requests", labels=["route", "method", "status"]
        )
        for key, n in list(m.http.items()):
            http.add_metric(list(key), n)
        yield http
        # remote reads of predict_root that met a transient fault (storage restarting)
        retries, gave_up = RETRIES.total + m.retries[0], RETRIES.gave_up + m.retries[1]
        yield CounterMetricFamily(
            "mlaas4hep_io_retries", "Remote reads retried after a transient fault", value=retries
        )
        yield CounterMetricFamily(
            "mlaas4hep_io_retry_budget_exhausted",
            "Remote reads given up after their retry budget",
            value=gave_up,
        )
        infer = CounterMetricFamily(
            "mlaas4hep_inference_requests", "Inference requests", labels=["model", "status"]
        )
        for ikey, count in list(m.infer.items()):
            infer.add_metric(list(ikey), count)
        yield infer
        yield _histogram(
            "mlaas4hep_request_latency_seconds", "Inference latency in the server", m.latency, LATENCY_BUCKETS
        )
        yield _histogram("mlaas4hep_batch_size_rows", "Rows per onnxruntime call", m.batch, BATCH_BUCKETS)
        yield _histogram(
            "mlaas4hep_queue_seconds", "Wait of the oldest request of a batch", m.queue, QUEUE_BUCKETS
        )
        yield GaugeMetricFamily("mlaas4hep_models_loaded", "onnxruntime sessions in memory", value=m.loaded)
        stalled = CounterMetricFamily(
            "mlaas4hep_request_body_timeouts",
            "Requests cut off because their body stopped arriving (--body-timeout)",
            labels=["protocol"],
        )
        for protocol in ("http", "grpc"):
            stalled.add_metric([protocol], m.body_timeouts.get(protocol, 0))
        yield stalled
        yield CounterMetricFamily(
            "mlaas4hep_request_head_timeouts",
            "HTTP connections closed because a request's head did not arrive in time (--head-timeout)",
            value=m.body_timeouts.get("head", 0),
        )
        held, waiting = m.intake_now()
        yield GaugeMetricFamily(
            "mlaas4hep_request_bytes_pending", "Request bytes held now, within --max-pending-mb", value=held
        )
        yield GaugeMetricFamily(
            "mlaas4hep_requests_waiting_for_intake",
            "Requests waiting for room in --max-pending-mb",
            value=waiting,
        )
