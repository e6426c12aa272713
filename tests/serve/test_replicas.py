"""Replicas behind a real load balancer: the shipped ``deploy/nginx/mlaas4hep.conf`` in front of
three servers sharing one repository, loaded by Triton's ``perf_analyzer`` at concurrency 32.

While it runs (three 10 s windows) the replicas restart one after another (SIGTERM: each drains, stops,
and starts again on its ports; the balancer follows their readiness as Kubernetes' endpoints
do): not one request fails, over HTTP or gRPC. One replica killed with SIGKILL: over HTTP not
one request fails (nginx retries on the next replica), over gRPC no more than were in flight
on it. A model uploaded through nginx is answered by every replica within 2 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mlaas4hep.bundle_archive import pack_directory
from mlaas4hep.localservers import LoadBalancer, Replica

from .conftest import HTTP, TOKEN, install_copy
from .test_grpc_perf_analyzer import PA, PA_ENV, WHY

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "nginx" / "mlaas4hep.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = [
    pytest.mark.skipif(PA is None, reason=WHY),
    pytest.mark.skipif(not os.path.exists(NGINX), reason="no nginx (.ci/system-deps.sh installs it)"),
]


@pytest.fixture(scope="module")
def cluster(tth_bundle, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("replicas")
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n")
    replicas = [
        Replica(repo, "--token-file", str(token_file), "--drain-seconds", "3").start() for _ in range(3)
    ]
    lb = LoadBalancer(CONF, replicas)
    yield replicas, lb, tth_bundle
    lb.stop()
    for r in replicas:
        r.stop(signal.SIGKILL)


def _perf_analyzer(protocol: str, url: str, out: dict, window_ms: int = 10000) -> None:
    """Three measurement windows at concurrency 32; perf_analyzer stops at the first failed request."""
    assert PA is not None
    cmd = [PA, "-m", "tth", "-x", "1", "-u", url, "-i", protocol, "-b", "1", "--concurrency-range", "32"]
    cmd += ["-p", str(window_ms), "-s", "1000", "-r", "3", "--max-threads", "32", "-v"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=PA_ENV)
    out.update(returncode=r.returncode, text=r.stdout + r.stderr)


def _check_no_failure(result: dict, lb: LoadBalancer) -> list[float]:
    """perf_analyzer ran to its end (so no request failed); its throughput per window."""
    text = result["text"]
    # exit status 2 with this message: the throughput varied too much to call it stable (the
    # replicas restarted meanwhile); any failed request stops perf_analyzer with an error instead
    log = (lb.work / "error.log").read_text()[-3000:]
    unstable = result["returncode"] == 2 and "Failed to obtain stable measurement" in text
    assert result["returncode"] == 0 or unstable, text[-1500:] + "\nnginx: " + log
    assert "error" not in text.lower() and "failed to find" not in text.lower(), text[-3000:]
    passes = [float(v) for v in re.findall(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec", text)]
    assert len(passes) >= 3 and min(passes) > 0, text[-3000:]
    return passes


def test_a_rolling_restart_behind_nginx_loses_no_request(cluster):
    """For three 10 s windows, perf_analyzer at concurrency 32 over HTTP and another over gRPC, through nginx,
    while the three replicas restart one after another (SIGTERM: each drains for 3 s, stops,
    starts again): not one request fails on either protocol.

    HTTP goes through the shipped configuration as it is: a draining replica still answers,
    a stopped one refuses connections and nginx resends the request to the next one. nginx
    cannot resend a gRPC call once it has passed it on, and grpc cancels the calls that reach
    a server as it stops; so gRPC goes through an nginx that follows the replicas' readiness
    as Kubernetes' endpoints do for Envoy (a replica not ready is marked ``down``): a draining
    replica gets no new call and finishes those it has.
    """
    replicas, lb, _ = cluster
    follower = LoadBalancer(CONF, replicas, follow_readiness=True)
    try:
        results: dict[str, dict] = {"http": {}, "grpc": {}}
        urls = {"http": lb.url.removeprefix("http://"), "grpc": f"127.0.0.1:{follower.grpc_port}"}
        loads = [threading.Thread(target=_perf_analyzer, args=(p, urls[p], results[p])) for p in results]
        t0 = time.monotonic()
        for t in loads:
            t.start()
        time.sleep(3)
        for r in replicas:
            r.stop(signal.SIGTERM)
            r.start()
        restarted, covered = time.monotonic() - t0, all(t.is_alive() for t in loads)
        for t in loads:
            t.join()
        # the load outlasted the restarts: every replica went down and came back under it
        assert covered, f"the load ended before the restarts did ({restarted:.1f} s)"
        assert follower.reloads >= 2  # it did follow the replicas' readiness
        http = _check_no_failure(results["http"], lb)
        grpc = _check_no_failure(results["grpc"], follower)
    finally:
        follower.stop()
    print(
        f"rolling restart through nginx in {restarted:.1f} s: HTTP {http} infer/s, gRPC {grpc} infer/s, no failure"
    )


def test_a_replica_killed_behind_nginx(cluster):
    """perf_analyzer over HTTP at concurrency 32 and 16 tritonclient gRPC clients through nginx
    while one replica is killed (SIGKILL, no drain) and started again.

    HTTP: not one request fails (nginx retries it on the next replica). gRPC: no more fail
    than were in flight on the killed replica (at most the 16 clients' calls), each with
    UNAVAILABLE or CANCELLED (never started elsewhere, safe to retry), and never an answer
    without the model.
    """
    replicas, lb, tth_bundle = cluster
    result: dict = {}
    load = threading.Thread(
        target=_perf_analyzer, args=("http", lb.url.removeprefix("http://"), result, 4000)
    )
    x = tth_bundle.x[:1]
    done = threading.Event()
    ok, failed = [0], []

    def client() -> None:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{lb.grpc_port}")
        while not done.is_set():
            t = grpcclient.InferInput("x", list(x.shape), "FP32")
            t.set_data_from_numpy(x)
            try:
                c.infer("tth", [t], client_timeout=20)
                ok[0] += 1
            except InferenceServerException as err:
                failed.append(err.status())

    clients = [threading.Thread(target=client) for _ in range(16)]
    load.start()
    for t in clients:
        t.start()
    time.sleep(3)
    replicas[1].stop(signal.SIGKILL)  # no drain: connections reset, nginx retries HTTP elsewhere
    time.sleep(2)
    replicas[1].start()
    covered = load.is_alive()
    load.join()
    done.set()
    for t in clients:
        t.join()
    assert covered, "the load ended before the killed replica came back"
    passes = _check_no_failure(result, lb)
    assert ok[0] > 500
    assert set(failed) <= {"StatusCode.CANCELLED", "StatusCode.UNAVAILABLE"}, set(failed)
    assert len(failed) <= 16, len(failed)
    print(f"SIGKILL through nginx: HTTP passes {passes} infer/s; gRPC {ok[0]} answered, {len(failed)} failed")


def test_an_upload_through_nginx_is_served_by_every_replica_within_2_s(cluster):
    replicas, lb, tth_bundle = cluster
    r = HTTP.post(
        lb.url + "/upload?name=fresh",
        content=pack_directory(tth_bundle.path),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/gzip"},
    )
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    waiting = {rep.url for rep in replicas}
    while waiting and time.monotonic() - t0 < 10:
        waiting = {u for u in waiting if HTTP.get(u + "/v2/models/fresh/ready").status_code != 200}
        time.sleep(0.05)
    took = time.monotonic() - t0
    assert not waiting, f"not served by {waiting} after {took:.1f} s"
    assert took < 2.0, took
    # and a deletion through nginx is seen by all of them too
    assert (
        HTTP.delete(lb.url + "/delete/fresh", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    )
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        if all(HTTP.get(rep.url + "/v2/models/fresh").status_code == 404 for rep in replicas):
            break
        time.sleep(0.05)
    assert time.monotonic() - t0 < 2.0
