"""One scrape for every worker process: each publishes its metrics, the one scraped adds them up.

With ``--workers N`` the kernel hands each connection to one of N processes,
so a Prometheus scrape of ``/metrics`` reaches one of them. Each worker writes
its :meth:`~mlaas4hep.serve.metrics.Metrics.snapshot` every second to
``DIR/<pid>.json`` (atomically: a temporary file, then a rename), from a
daemon thread; the worker answering a scrape adds its own live numbers to the
snapshots of the other workers that are still running. ``DIR`` is made by the
parent process for the server's lifetime. Prometheus' own multiprocess mode
would cost every request several locked writes to shared memory; here a
request costs nothing more, and a scrape sees the others' numbers at most a
second old.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric

from ..io.sources import RETRIES
from .metrics import Metrics

ENV = "MLAAS4HEP_METRICS_SHARE"  # the directory, passed by the parent to its workers
PERIOD = 1.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MetricsShare:
    """Publishes ``metrics`` to ``directory`` and reads the other workers' from it."""

    def __init__(self, metrics: Metrics, directory: str | os.PathLike[str]):
        self.metrics, self.dir, self.pid = metrics, Path(directory), os.getpid()
        self._stop = threading.Event()
        metrics.peers = self.peers
        threading.Thread(target=self._publish_forever, name="mlaas4hep-metrics-share", daemon=True).start()

    def publish(self) -> None:
        tmp = self.dir / f".{self.pid}.tmp"
        tmp.write_text(json.dumps(self.metrics.snapshot()))
        os.replace(tmp, self.dir / f"{self.pid}.json")

    def _publish_forever(self) -> None:
        while not self._stop.wait(PERIOD):
            try:
                self.publish()
            except OSError:  # the directory is gone: the server is stopping
                return

    def peers(self) -> list[dict[str, Any]]:
        out = []
        for f in self.dir.glob("*.json"):
            pid = int(f.stem) if f.stem.isdigit() else -1
            if pid == self.pid or pid < 0 or not _alive(pid):
                continue
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, ValueError):  # being replaced, or gone: at most a second old anyway
                continue
        return out

    def close(self) -> None:
        self._stop.set()
        (self.dir / f"{self.pid}.json").unlink(missing_ok=True)


def all_snapshots(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The snapshots of every worker still running."""
    out = []
    for f in Path(directory).glob("*.json"):
        if not f.stem.isdigit() or not _alive(int(f.stem)):
            continue
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    return out


class _AllWorkers:
    """A collector of every worker's metrics, added up (for the supervisor's metrics port)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.dir = directory

    def collect(self) -> Iterator[Metric]:
        merged = Metrics(lambda err: 200)
        merged.retries = (-RETRIES.total, -RETRIES.gave_up)  # only the workers' count
        for snap in all_snapshots(self.dir):
            merged.absorb(snap)
        yield from merged.registry.collect()


def serve_all(directory: str | os.PathLike[str], host: str, port: int) -> None:
    """``--metrics-port`` with ``--workers N``: the supervisor serves every worker's metrics there."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(_AllWorkers(directory))
    start_http_server(port, host, registry=registry)
