"""What a facility's operators rely on: Triton's metric names, the saturation signal, drain on SIGTERM.

Each is checked on a real server, through the clients facilities use: Prometheus text as
KEDA and Grafana read it, tritonclient over gRPC (CMSSW's SONIC calls RepositoryIndex at
start-up and skips a server that fails it), and SIGTERM as Kubernetes sends it.
"""

from __future__ import annotations

import json
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mlaas4hep.localservers import free_port

from .conftest import HTTP, ServerProcess, install_copy


def _metrics(url: str) -> dict[tuple[str, str], float]:
    """``{(name, labels): value}`` of a Prometheus text exposition."""
    out = {}
    for line in HTTP.get(url + "/metrics").text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def _infer_http(url: str, x: np.ndarray) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    return HTTP.post(url + "/v2/models/tth/infer", json=body)


def _infer_grpc(client: grpcclient.InferenceServerClient, x: np.ndarray):
    t = grpcclient.InferInput("x", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    return client.infer("tth", [t])


@pytest.fixture
def ops_server(tth_bundle, tmp_path):
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    grpc_port = free_port()
    srv = ServerProcess(repo, "--grpc-port", str(grpc_port), "--saturation-queue-ms", "0.000001").start()
    srv.grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    yield srv
    srv.stop()


def test_triton_metric_names_labels_and_values(ops_server, tth_bundle):
    srv, x = ops_server, tth_bundle.x
    for rows in (1, 5, 20):
        assert _infer_http(srv.url, x[:rows]).status_code == 200
        _infer_grpc(srv.grpc, x[:rows])
    assert _infer_http(srv.url, x[:3, :5]).status_code == 400  # a wrong shape reaches the model: a failure
    m = _metrics(srv.url)
    lab = '{model="tth",version="1"}'
    assert m[("nv_inference_request_success", lab)] == 6
    assert m[("nv_inference_request_failure", lab)] == 1
    assert m[("nv_inference_count", lab)] == 2 * (1 + 5 + 20)
    stats = HTTP.get(srv.url + "/v2/models/tth/stats").json()["model_stats"][0]
    assert m[("nv_inference_exec_count", lab)] == stats["execution_count"] >= 1
    assert m[("nv_inference_queue_duration_us", lab)] == pytest.approx(
        stats["inference_stats"]["queue"]["ns"] / 1000, rel=1e-6, abs=1
    )
    assert m[("nv_inference_compute_infer_duration_us", lab)] > 0
    assert m[("nv_inference_request_duration_us", lab)] >= m[("nv_inference_compute_infer_duration_us", lab)]
    assert m[("nv_inference_compute_input_duration_us", lab)] == 0
    assert m[("nv_inference_pending_request_count", lab)] == 0
    # SuperSONIC's KEDA query over two scrapes: milliseconds of queue per execution, finite and >= 0
    before = m
    for _ in range(5):
        _infer_grpc(srv.grpc, x[:2])
    after = _metrics(srv.url)
    dq = after[("nv_inference_queue_duration_us", lab)] - before[("nv_inference_queue_duration_us", lab)]
    de = after[("nv_inference_exec_count", lab)] - before[("nv_inference_exec_count", lab)]
    assert de >= 1 and 0 <= dq / (de * 1000 + 0.001) < 1000


def test_a_saturated_server_fails_the_repository_index_and_keeps_inferring(ops_server, tth_bundle):
    srv = ops_server
    # idle: not saturated; SONIC's start-up calls succeed
    assert HTTP.post(srv.url + "/v2/repository/index").status_code == 200
    assert [m.name for m in srv.grpc.get_model_repository_index().models] == ["tth"]
    for _ in range(3):  # any wait in the queue is above this server's (tiny) limit
        _infer_grpc(srv.grpc, tth_bundle.x[:4])
    r = HTTP.post(srv.url + "/v2/repository/index")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["error"].startswith("this server is saturated: ")
    with pytest.raises(InferenceServerException) as err:
        srv.grpc.get_model_repository_index()
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    # inference goes on, and so do readiness and the model's metadata
    assert _infer_http(srv.url, tth_bundle.x[:2]).status_code == 200
    assert srv.grpc.is_server_ready() and srv.grpc.is_model_ready("tth")


def test_drain_on_sigterm(tth_bundle, tmp_path):
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    grpc_port = free_port()
    srv = ServerProcess(repo, "--grpc-port", str(grpc_port), "--drain-seconds", "4").start()
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    kept = httpx.Client(timeout=10)  # a connection opened before the SIGTERM
    try:
        assert kept.get(srv.url + "/v2/health/ready").status_code == 200
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        while kept.get(srv.url + "/v2/health/ready").status_code == 200:  # turns at once
            assert time.monotonic() < deadline, "still ready after SIGTERM"
            time.sleep(0.05)
        r = kept.get(srv.url + "/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        assert kept.get(srv.url + "/v2/health/live").status_code == 200
        assert grpc.is_server_ready() is False and grpc.is_server_live() is True
        # still answering, on the open connection, on new ones, and over gRPC
        x = tth_bundle.x[:3]
        body = {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [3, x.shape[1]], "data": x.ravel().tolist()}
            ]
        }
        assert kept.post(srv.url + "/v2/models/tth/infer", json=body).status_code == 200
        assert httpx.post(srv.url + "/v2/models/tth/infer", json=body, timeout=10).status_code == 200
        out = _infer_grpc(grpc, x)
        assert out.as_numpy(out.get_response().outputs[0].name).shape == (3, 1)
        assert srv.proc.poll() is None
        assert srv.proc.wait(timeout=30) == 0  # then it stops by itself, with status 0
    finally:
        kept.close()
        srv.stop()


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


def _served(snapshot: Path) -> bool:
    """Whether one worker's published metrics count an inference (``{"infer": [[model, ..., n]]}``)."""
    try:
        return any(row[-1] > 0 for row in json.loads(snapshot.read_text())["infer"])
    except (OSError, ValueError):
        return False


def _published_successes(share: Path, pids: set[int]) -> tuple[int, int]:
    """The inference requests answered for ``tth`` by the workers ``pids``, as their last published
    snapshots count them: ``(mlaas4hep's status-200 count, Triton's success count)``."""
    ours = triton = 0
    for pid in pids:
        try:
            snapshot = json.loads((share / f"{pid}.json").read_text())
        except (OSError, ValueError):
            continue
        ours += sum(row[-1] for row in snapshot["infer"] if row[0] == "tth" and row[1] == "200")
        triton += sum(c["request_success"] for model, _, c in snapshot["triton"] if model == "tth")
    return ours, triton


def _until(condition, seconds: float) -> bool:
    """Whether ``condition()`` holds within ``seconds`` (polled every 50 ms)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_one_scrape_reports_every_worker(tth_bundle, tmp_path):
    """``--workers 2``: requests spread over both processes; any scrape counts all of them, and
    so does the metrics port (Triton's 8002), which the supervisor process serves."""
    from .conftest import HTTP_NEW

    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    mport = free_port()
    srv = ServerProcess(repo, "--workers", "2", "--metrics-port", str(mport)).start()
    try:
        x = tth_bundle.x[:2]
        body = {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
        }
        pids: set[int] = set()
        with ThreadPoolExecutor(8) as pool:  # concurrent connections keep both workers busy
            for _ in range(60):  # which process accepts is up to the kernel: ask until both have answered
                pids.update(pool.map(lambda _: HTTP_NEW.get(srv.url + "/status").json()["pid"], range(8)))
                if len(pids) == 2:
                    break
            assert len(pids) == 2, "both workers answered /status"
            share = Path(_environ(min(pids))["MLAAS4HEP_METRICS_SHARE"])
            sent = 0
            for _ in range(60):
                codes = list(
                    pool.map(
                        lambda _: HTTP_NEW.post(srv.url + "/v2/models/tth/infer", json=body).status_code,
                        range(8),
                    )
                )
                assert codes == [200] * 8
                sent += 8
                # each worker publishes its own numbers every second
                if sent >= 40 and _until(lambda: all(_served(share / f"{pid}.json") for pid in pids), 1.5):
                    break
        assert all(_served(share / f"{pid}.json") for pid in pids), "both workers served inferences"
        # every worker has published its numbers since the last request
        assert _until(lambda: _published_successes(share, pids) == (sent, sent), 10), (
            _published_successes(share, pids),
            sent,
        )
        lab = '{model="tth",version="1"}'
        seen = set()
        for _ in range(10):
            text = HTTP_NEW.get(srv.url + "/metrics").text
            m = {
                ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
                for ln in text.splitlines()
                if ln and ln[0] != "#"
            }
            seen.add(m['mlaas4hep_inference_requests_total{model="tth",status="200"}'])
            assert m[f"nv_inference_request_success{lab}"] == sent
            assert m[f"nv_inference_count{lab}"] == 2 * sent
        assert seen == {float(sent)}
        # Triton's statistics (what perf_analyzer reads before and after each pass) count every
        # worker's requests too, on whichever worker a new connection reaches
        for _ in range(10):
            stats = HTTP_NEW.get(srv.url + "/v2/models/tth/stats").json()["model_stats"][0]
            counts = stats["inference_stats"]
            assert (stats["inference_count"], counts["success"]["count"], counts["queue"]["count"]) == (
                2 * sent,
                sent,
                sent,
            )
        every = HTTP_NEW.get(srv.url + "/v2/models/stats").json()["model_stats"]
        assert every[0]["inference_count"] == 2 * sent
        # Triton's metrics port, served by the supervisor: every worker's numbers, added up
        text = HTTP.get(f"http://127.0.0.1:{mport}/metrics").text
        assert f"nv_inference_request_success{lab} {float(sent)}" in text
        assert f"nv_inference_count{lab} {float(2 * sent)}" in text
    finally:
        srv.stop()
