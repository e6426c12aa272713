"""Triton's model statistics: ``GET /v2/models[/{name}[/versions/{v}]]/stats`` and gRPC ``ModelStatistics``.

Clients ask for them to report what the server did: Triton's ``perf_analyzer``
reads them before and after each measurement when the server lists the
``statistics`` extension (its "Server:" lines), dashboards poll them. They are built from what
:class:`~mlaas4hep.serve.metrics.Metrics` counts anyway, as Triton's JSON
(the gRPC reply is the same dict parsed into ``ModelStatisticsResponse``)::

    {"model_stats": [{"name": "mlp", "version": "1", "last_inference": 1764172800123,
                      "inference_count": 5120, "execution_count": 97,
                      "inference_stats": {"success": {"count": 5120, "ns": 2.1e9}, ...},
                      "batch_stats": []}]}

What each number means here (durations in nanoseconds):

* ``inference_count``: rows inferred (a request of 8 rows counts 8, as Triton);
* ``execution_count``: onnxruntime calls (a batch of the dynamic batcher is one);
* ``success`` / ``fail``: inference requests answered / refused, and their time
  in the server (a refused request's time is how long it took to refuse it);
* ``queue``: per request that reached onnxruntime, its wait in the dynamic batcher;
* ``compute_infer``: per such request, the time of the onnxruntime call that
  computed it (from handing the batch over to having its scores, the executor
  hop included): a call for 20 requests counts its time 20 times, as in Triton;
* ``compute_input``, ``compute_output``: the same count, 0 ns (their work is
  inside ``compute_infer``; perf_analyzer wants the three counts equal);
* ``cache_hit``, ``cache_miss``, ``batch_stats``: zero or empty (no response cache).

Counts are per model name, over all its versions (the server counts by name);
they are reported under the version asked for, or the newest. ``last_inference``
is milliseconds since the epoch (0: none yet). A model the repository does not
hold is an error (404, ``NOT_FOUND``), as in Triton. With ``--workers N`` the
numbers are the server's, whichever worker answers: its own, plus the other
workers' as they published them (at most a second old, as for ``/metrics``).
"""

from __future__ import annotations

from typing import Any

from ..bundle_spec import BundleSpec
from .metrics import Metrics


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": int(seconds * 1e9)}


def model_statistics(m: Metrics, info: BundleSpec) -> dict[str, Any]:
    """One model's entry of ``model_stats``, reported under the version ``info`` resolved to."""
    c = m.model_counts(info.name)
    ok, ok_s = m.latency_of(info.name)
    zero = _duration(0, 0.0)
    return {
        "name": info.name,
        "version": str(info.version),
        "last_inference": c.last_ms,
        "inference_count": c.rows,
        "execution_count": c.batches,
        "inference_stats": {
            "success": _duration(ok, ok_s),
            "fail": _duration(c.fail, c.fail_s),
            "queue": _duration(c.requests, c.queue_s),
            "compute_input": _duration(c.requests, 0.0),
            "compute_infer": _duration(c.requests, c.compute_s),
            "compute_output": _duration(c.requests, 0.0),
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [],
    }


def statistics(m: Metrics, specs: list[BundleSpec]) -> dict[str, Any]:
    """Triton's statistics reply for the models of ``specs`` (the data plane resolves them)."""
    return {"model_stats": [model_statistics(m, info) for info in specs]}
