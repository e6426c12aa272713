"""Triton's ``perf_analyzer`` against our server over HTTP and gRPC, with no ``--shape``.

perf_analyzer sizes its requests from the model metadata and configuration:
with ``max_batch_size: 0`` and dims ``[-1, F]`` it refused to run without
``--shape``. It is not on PyPI (``perf-analyzer`` there is a placeholder); the
binary ships in the ``tritonclient`` wheels up to 2.40::

    pip download --no-deps "tritonclient[all]==2.40.0"
    unzip -j tritonclient-2.40.0-*.whl 'tritonclient-2.40.0.data/data/bin/perf_analyzer'
    apt-get install libb64-0d            # and libcudart.so.12, from the nvidia-cuda-runtime-cu12 wheel:
    export LD_LIBRARY_PATH=.../nvidia/cuda_runtime/lib

``.ci/perf-analyzer.sh`` does that into ``.venv/perf_analyzer/`` (the binary, and
``lib/`` with ``libcudart.so.12``). The test runs the binary named by
``$PERF_ANALYZER``, else ``.venv/perf_analyzer/perf_analyzer``, else
``perf_analyzer`` on PATH, with ``lib/`` next to it on ``LD_LIBRARY_PATH``; it is
skipped, saying why, only when none is found or it cannot start (a missing
shared library). No GPU is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlaas4hep import bundle

from .conftest import install_copy
from .grpc_helpers import GrpcServerProcess
from .test_multi_input import FEATURES, grouped_onnx

ROOT = Path(__file__).resolve().parents[2]


def _find() -> tuple[str | None, dict[str, str], str]:
    """(binary, environment to run it with, why it cannot run: "" when it can)."""
    pa = os.environ.get("PERF_ANALYZER")
    if not pa:
        local = ROOT / ".venv" / "perf_analyzer" / "perf_analyzer"
        pa = str(local) if local.exists() else shutil.which("perf_analyzer")
    if not pa:
        return None, {}, "no perf_analyzer: run .ci/perf-analyzer.sh (installs it into .venv/perf_analyzer/)"
    if not os.access(pa, os.X_OK):
        return None, {}, f"perf_analyzer at {pa} is not executable"
    env = dict(os.environ)
    lib = Path(pa).resolve().parent / "lib"
    if lib.is_dir():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    try:
        r = subprocess.run([pa, "--version"], capture_output=True, text=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, {}, f"perf_analyzer at {pa} does not start: {err}"
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit status {r.returncode}"]
        return None, {}, f"perf_analyzer at {pa} does not start: {why[0]} (run .ci/perf-analyzer.sh)"
    return pa, env, ""


PA, PA_ENV, WHY = _find()
pytestmark = pytest.mark.skipif(PA is None, reason=WHY)


@pytest.fixture(scope="module")
def srv(tth_bundle, tmp_path_factory):
    repo = tmp_path_factory.mktemp("pa") / "repo"
    repo.mkdir()
    install_copy(repo, tth_bundle.path, "tth")
    # a model of three tensors (jets, a BOOL jets_mask, event), as object-level models are
    grouped = repo.parent / "grouped"
    bundle.write(
        grouped, grouped_onnx(), None, ["bkg", "sig"], name="grouped", framework="onnx", features=FEATURES
    )
    install_copy(repo, grouped, "grouped")
    s = GrpcServerProcess(repo).start()
    yield s
    s.stop()


@pytest.mark.parametrize("model", ["tth", "grouped"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_without_shape(srv, protocol, model):
    url = srv.url.removeprefix("http://") if protocol == "http" else srv.grpc_url
    assert PA is not None
    cmd = [PA, "-m", model, "-u", url, "-i", protocol, "-b", "4", "--concurrency-range", "4"]
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
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=PA_ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Throughput:" in r.stdout and "error" not in r.stdout.lower()
    # the server lists the statistics extension, so perf_analyzer reads and reports its statistics
    server = r.stdout.split("Server:", 1)[1]
    assert "Inference count:" in server and "compute infer" in server
