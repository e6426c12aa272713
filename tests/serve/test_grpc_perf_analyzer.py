"""Triton's ``perf_analyzer`` against our server over HTTP and gRPC, with no ``--shape``.

perf_analyzer sizes its requests from the model metadata and configuration:
with ``max_batch_size: 0`` and dims ``[-1, F]`` it refused to run without
``--shape``. It is not on PyPI (``perf-analyzer`` there is a placeholder); the
binary ships in the ``tritonclient`` wheels up to 2.40::

    pip download --no-deps "tritonclient[all]==2.40.0"
    unzip -j tritonclient-2.40.0-*.whl 'tritonclient-2.40.0.data/data/bin/perf_analyzer'
    apt-get install libb64-0d            # and libcudart.so.12, from the nvidia-cuda-runtime-cu12 wheel:
    export LD_LIBRARY_PATH=.../nvidia/cuda_runtime/lib

The test runs the binary named by ``$PERF_ANALYZER`` (or ``perf_analyzer`` on
PATH) and is skipped without one. No GPU is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .conftest import install_copy
from .grpc_helpers import GrpcServerProcess

PA = os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")
pytestmark = pytest.mark.skipif(
    not PA or not os.access(PA, os.X_OK), reason="no perf_analyzer binary ($PERF_ANALYZER)"
)


@pytest.fixture(scope="module")
def srv(tth_bundle, tmp_path_factory):
    repo = tmp_path_factory.mktemp("pa") / "repo"
    repo.mkdir()
    install_copy(repo, tth_bundle.path, "tth")
    s = GrpcServerProcess(repo).start()
    yield s
    s.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_without_shape(srv, protocol):
    url = srv.url.removeprefix("http://") if protocol == "http" else srv.grpc_url
    cmd = [PA, "-m", "tth", "-u", url, "-i", protocol, "-b", "4", "--concurrency-range", "4"]
    # a short, lenient measurement: this checks that it runs, not how fast (the machine is shared)
    cmd += [
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        "50",
        "-s",
        "1000",
        "-r",
        "3",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Throughput:" in r.stdout and "error" not in r.stdout.lower()
