"""Transient read failures are retried and reading resumes at the failed entry range."""

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from mlaas4hep.io import Dataset, FileOpenError, ServerUnavailableError
from mlaas4hep.io.sources import with_retries

from ..conftest import sample_config


class FlakyProxy:
    """A real HTTP server on 127.0.0.1 that forwards to nginx but answers every ``every``-th GET with 503."""

    def __init__(self, upstream: str, every: int):
        self.requests = self.failures = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _forward(self, method):
                with lock:
                    proxy.requests += 1
                    fail = method == "GET" and proxy.requests % every == 0
                    proxy.failures += fail
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                req = urllib.request.Request(upstream + self.path, method=method)
                if "Range" in self.headers:
                    req.add_header("Range", self.headers["Range"])
                with urllib.request.urlopen(req, timeout=10) as r:
                    body = r.read()
                    self.send_response(r.status)
                    for h in ("Content-Type", "Content-Range", "Accept-Ranges", "Last-Modified", "ETag"):
                        if r.headers.get(h):
                            self.send_header(h, r.headers[h])
                    self.send_header("Content-Length", r.headers.get("Content-Length", str(len(body))))
                    self.end_headers()
                    if method == "GET":
                        self.wfile.write(body)

            def do_GET(self):
                self._forward("GET")

            def do_HEAD(self):
                self._forward("HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(http_server):
    p = FlakyProxy(f"http://127.0.0.1:{http_server.port}", every=5)
    yield p
    p.stop()


def test_resume_after_injected_failures_loses_and_duplicates_nothing(data_dir, flaky):
    names = [("ttH_0.root", 1), ("ttbar_0.root", 0)]
    base = sample_config(data_dir, shuffle=False, normalize="none", chunk_size=2_500)
    local_cfg = dict(base, files=[{"path": str(data_dir / n), "label": lab} for n, lab in names])
    flaky_cfg = dict(
        base, files=[{"path": flaky.url(n), "label": lab} for n, lab in names], retries=4, retry_backoff=0.01
    )
    ref = Dataset.from_config(local_cfg).to_chunk()
    ds = Dataset.from_config(flaky_cfg)
    got = ds.to_chunk()
    assert flaky.failures > 0, "the proxy injected no failure"
    np.testing.assert_array_equal(got.event_id, ref.event_id)
    np.testing.assert_array_equal(got.x, ref.x)
    assert len(got) == 40_000


def test_with_retries_gives_up_with_a_clear_error():
    calls = []

    def always_fails():
        calls.append(1)
        raise ConnectionResetError("peer reset")

    with pytest.raises(
        ServerUnavailableError,
        match=r"root://x//f\.root.*failed after 3 attempts: ConnectionResetError: peer reset",
    ) as info:
        with_retries(
            always_fails,
            "reading entries 0-10 of root://x//f.root",
            retries=2,
            backoff=0.001,
            url="root://x//f.root",
        )
    assert len(calls) == 3
    assert isinstance(info.value, FileOpenError) and info.value.transient


def test_with_retries_recovers():
    calls = []

    def flaky_read():
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("slow server")
        return "data"

    assert with_retries(flaky_read, "read", retries=3, backoff=0.001) == "data"
    assert len(calls) == 3
