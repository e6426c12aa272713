"""Replicas behind a real load balancer: the shipped ``deploy/nginx/mlaas4hep.conf`` in front of
three servers sharing one repository, loaded by Triton's ``perf_analyzer`` at concurrency 32.

While it runs for 30 s or more the replicas restart one after another (SIGTERM: each drains,
stops, and starts again on its ports) and one is killed with SIGKILL and started again: over
HTTP not one request fails (nginx retries on the next replica); over gRPC the rolling restart
loses none. A model uploaded through nginx is answered by every replica within 2 s.
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
        Replica(repo, "--token-file", str(token_file), "--drain-seconds", "1").start() for _ in range(3)
    ]
    lb = LoadBalancer(CONF, replicas)
    yield replicas, lb, tth_bundle
    lb.stop()
    for r in replicas:
        r.stop(signal.SIGKILL)


def _perf_analyzer(protocol: str, url: str, out: dict) -> None:
    """At least 30 s at concurrency 32 (three 10-s windows); perf_analyzer stops at the first failed request."""
    assert PA is not None
    cmd = [PA, "-m", "tth", "-x", "1", "-u", url, "-i", protocol, "-b", "1", "--concurrency-range", "32"]
    cmd += ["-p", "10000", "-s", "1000", "-r", "3", "--max-threads", "32", "-v"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=PA_ENV)
    out.update(returncode=r.returncode, text=r.stdout + r.stderr)


def _roll(replicas: list[Replica], kill: bool) -> None:
    time.sleep(3)
    for r in replicas:  # a rolling restart: each drains (1 s), stops, starts again
        r.stop(signal.SIGTERM)
        r.start()
    if kill:
        replicas[1].stop(signal.SIGKILL)  # no drain: connections reset, nginx retries elsewhere
        time.sleep(2)
        replicas[1].start()


def test_restarts_behind_nginx(cluster):
    """For 30 s, perf_analyzer over HTTP at concurrency 32 and 16 tritonclient gRPC clients,
    through nginx, while the replicas restart one after another and one is killed (SIGKILL).

    HTTP: not one request fails (nginx retries it on the next replica). gRPC: what fails is
    bounded by the calls that had reached a stopping replica's gRPC core but not yet its
    handlers (grpc core cancels those: CANCELLED, never started, safe to retry) and the calls
    in flight on the killed one; nothing else, and never an answer without the model.
    """
    replicas, lb, tth_bundle = cluster
    result: dict = {}
    load = threading.Thread(target=_perf_analyzer, args=("http", lb.url.removeprefix("http://"), result))
    x = tth_bundle.x[:1]
    stop_at = time.monotonic() + 30
    ok, failed = [0], []

    def client() -> None:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{lb.grpc_port}")
        while time.monotonic() < stop_at:
            t = grpcclient.InferInput("x", list(x.shape), "FP32")
            t.set_data_from_numpy(x)
            try:
                c.infer("tth", [t], client_timeout=20)
                ok[0] += 1
            except InferenceServerException as err:
                failed.append(err.status())

    clients = [threading.Thread(target=client) for _ in range(16)]
    t0 = time.monotonic()
    load.start()
    for t in clients:
        t.start()
    _roll(replicas, kill=True)
    load.join()
    for t in clients:
        t.join()
    elapsed = time.monotonic() - t0
    text = result["text"]
    # exit status 2 with this message: the throughput varied too much to call it stable (the
    # replicas restarted meanwhile); any failed request stops perf_analyzer with an error instead
    log = (lb.work / "error.log").read_text()[-3000:]
    unstable = result["returncode"] == 2 and "Failed to obtain stable measurement" in text
    assert result["returncode"] == 0 or unstable, text[-1500:] + "\nnginx: " + log
    assert "error" not in text.lower() and "failed to find" not in text.lower(), text[-3000:]
    passes = [float(v) for v in re.findall(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec", text)]
    assert len(passes) >= 3 and min(passes) > 0, text[-3000:]
    assert elapsed >= 30
    assert ok[0] > 500
    assert set(failed) <= {"StatusCode.CANCELLED", "StatusCode.UNAVAILABLE"}, set(failed)
    assert len(failed) <= 16 * (len(replicas) + 1), len(failed)
    print(f"through nginx: HTTP passes {passes} infer/s; gRPC {ok[0]} answered, {len(failed)} failed")


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
