"""Triton's Prometheus metrics, with Triton's names, labels and units, beside ours.

What HEP's autoscalers and dashboards read was written for Triton: SuperSONIC's
KEDA ``ScaledObject`` scales on

    rate(nv_inference_queue_duration_us[30s]) / (rate(nv_inference_exec_count[30s]) * 1000 + 0.001)

(milliseconds of queue per execution), and its Grafana dashboards plot the
others. So the server exports, per ``model`` and ``version``:

=============================================  =====================================================
``nv_inference_request_success``              requests answered (counter)
``nv_inference_request_failure``               requests refused or failed after reaching the model
``nv_inference_count``                         inferences: rows, summed over requests
``nv_inference_exec_count``                    model executions (one onnxruntime call per batch)
``nv_inference_request_duration_us``           cumulative time from receiving to answering
``nv_inference_queue_duration_us``             cumulative wait in the dynamic batcher, per request
``nv_inference_compute_input_duration_us``     0: preparing inputs is inside compute_infer here
``nv_inference_compute_infer_duration_us``     cumulative onnxruntime time, per request
``nv_inference_compute_output_duration_us``    0, as compute_input
``nv_inference_pending_request_count``         requests queued or running now (gauge)
=============================================  =====================================================

The numbers are plain Python counters updated on the event loop (a few
hundred nanoseconds per request) and turned into Prometheus families when
scraped. :meth:`TritonCounts.queue_ms_per_exec` is the same quotient as KEDA's,
over the server's recent past, for the saturation signal.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, fields

from prometheus_client.core import GaugeMetricFamily, Metric

Key = tuple[str, str]  # (model, version)


@dataclass
class VersionCounts:
    """Triton's counters of one model version."""

    request_success: int = 0
    request_failure: int = 0
    count: int = 0
    exec_count: int = 0
    request_duration_us: float = 0.0
    queue_duration_us: float = 0.0
    compute_input_duration_us: float = 0.0
    compute_infer_duration_us: float = 0.0
    compute_output_duration_us: float = 0.0


HELP = {
    "request_success": "Number of successful inference requests, all batch sizes",
    "request_failure": "Number of failed inference requests, all batch sizes",
    "count": "Number of inferences performed (does not include cached requests)",
    "exec_count": "Number of model executions performed (does not include cached requests)",
    "request_duration_us": "Cumulative inference request duration in microseconds",
    "queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "compute_input_duration_us": "Cumulative compute input duration in microseconds",
    "compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
    "compute_output_duration_us": "Cumulative inference compute output duration in microseconds",
}


class TritonCounts:
    """Triton's counters per model version, the pending gauge, and a short history for saturation."""

    def __init__(self) -> None:
        self.versions: dict[Key, VersionCounts] = {}
        self.pending: dict[Key, int] = {}
        self._history: deque[tuple[float, float, int]] = deque()  # (time, queue µs, executions)

    def of(self, key: Key) -> VersionCounts:
        c = self.versions.get(key)
        if c is None:
            c = self.versions[key] = VersionCounts()
        return c

    def request(self, key: Key, ok: bool, seconds: float) -> None:
        c = self.versions.get(key) or self.of(key)
        if ok:
            c.request_success += 1
        else:
            c.request_failure += 1
        c.request_duration_us += seconds * 1e6

    def executed(self, key: Key, rows: int, requests: int, waited: float, compute: float) -> None:
        c = self.versions.get(key) or self.of(key)
        c.exec_count += 1
        c.count += rows
        c.queue_duration_us += waited * 1e6
        c.compute_infer_duration_us += compute * requests * 1e6
        now = time.monotonic()
        if not self._history or now - self._history[-1][0] >= 1.0:
            self._sample(now)

    def _totals(self) -> tuple[float, int]:
        cs = list(self.versions.values())
        return sum(c.queue_duration_us for c in cs), sum(c.exec_count for c in cs)

    def _sample(self, now: float) -> None:
        """Remember the totals (at most once a second, while executions happen)."""
        self._history.append((now, *self._totals()))
        while len(self._history) > 120:
            self._history.popleft()

    def queue_ms_per_exec(self, window: float = 10.0) -> float:
        """Milliseconds of queue per execution over about the last ``window`` seconds (KEDA's quotient)."""
        now = time.monotonic()
        queue, execs = self._totals()
        base = next(((q, e) for t, q, e in self._history if now - t <= window), (queue, execs))
        return (queue - base[0]) / ((execs - base[1]) * 1000 + 0.001)

    def collect(self) -> Iterator[Metric]:
        items = list(self.versions.items())
        for f in fields(VersionCounts):
            # Triton's counters carry no "_total" suffix (prometheus_client's families would add one)
            name = f"nv_inference_{f.name}"
            family = Metric(name, HELP[f.name], "counter")
            for (model, version), c in items:
                family.add_sample(name, {"model": model, "version": version}, getattr(c, f.name))
            yield family
        gauge = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            labels=["model", "version"],
        )
        for (model, version), n in list(self.pending.items()):
            gauge.add_metric([model, version], n)
        yield gauge
