"""Training as a service: ``serve --jobs`` trains what users submit, in processes of their own, and serves it.

Real servers (``python -m mlaas4hep.serve``) on 127.0.0.1, real trainings of
scikit-learn's SGD classifier on the generated sample (two epochs of 2,000
events per file: seconds), the model checked on v2 against onnxruntime on the
bundle the job wrote.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from mlaas4hep.client import Client, ClientError

from .conftest import HTTP, TOKEN, ServerProcess
from .jobs_helpers import SGD_MODEL_BODY, SLOW_MODEL, job_pids, sgd_model, train_config, wait_for
from .oracle import Oracle


@pytest.fixture(scope="module")
def jobs_server(data_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("jobs") / "repo"
    repo.mkdir()
    srv = ServerProcess(repo, "--jobs", "--data-dir", str(data_dir), "--jobs-running", "2").start()
    yield srv
    srv.stop()


@pytest.fixture
def client(jobs_server):
    with Client(jobs_server.url, token=TOKEN, timeout=30) as c:
        yield c


def _unpack(data: bytes, dest):
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_a_submitted_training_is_served_when_it_succeeds(client, jobs_server, data_dir, tmp_path):
    job = client.submit(train_config(data_dir, tmp_path / "train.yaml"), sgd_model(), name="sgd-job")
    assert job["state"] == "queued" and job["user"] == "admin" and job["name"] == "sgd-job"
    done = client.wait(job["id"], timeout=120, poll=0.3)
    assert done["state"] == "succeeded", done
    assert done["model"] == {"name": "sgd-job", "version": 1}
    assert done["started"] and done["finished"] and done["error"] is None
    # progress: the last epoch (0-based) with its events and validation metrics
    p = done["progress"]
    assert p["epoch"] == 1 and p["events"] > 0 and 0.5 < p["val_auc"] <= 1.0
    assert done["metrics"]["epochs_trained"] == 2
    # the bundle the job wrote is the one served, and it records who trained it
    bundle = _unpack(client._request("GET", f"/jobs/{job['id']}/bundle").content, tmp_path / "bundle")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["trained_by"] == {"user": "admin", "job": job["id"]}
    x = np.random.default_rng(1).normal(size=(64, len(meta["inputs"]["features"]))).astype(np.float32)
    np.testing.assert_allclose(client.predict("sgd-job", x), Oracle(bundle).score(x), rtol=1e-6, atol=1e-7)
    # the log holds the epochs as the command line prints them
    log = "\n".join(client.logs(job["id"]))
    assert "epoch 1: train loss" in log and "succeeded" in log


def test_a_bad_configuration_fails_with_the_configuration_error(client, data_dir, tmp_path):
    cfg = train_config(data_dir, tmp_path / "train.yaml")
    cfg.write_text(cfg.read_text().replace("branches:", "branchez:"))
    done = client.wait(client.submit(cfg, sgd_model())["id"], timeout=60, poll=0.3)
    assert done["state"] == "failed"
    # the user's file name, the line, and no directory of the server
    assert done["error"].startswith("train.yaml, line ")
    assert done["error"].endswith("unknown key 'branchez' (did you mean 'branches'?)")
    assert done["model"] is None


def test_a_dataset_outside_the_data_directories_is_refused(client, data_dir, tmp_path):
    cfg = train_config(data_dir, tmp_path / "train.yaml")
    cfg.write_text(cfg.read_text().replace(str(data_dir / "ttH_"), "/etc/ttH_"))
    done = client.wait(client.submit(cfg, sgd_model())["id"], timeout=60, poll=0.3)
    assert done["state"] == "failed"
    assert done["error"] == (
        "the dataset file '/etc/ttH_*.root' is outside this server's data directories (--data-dir)"
    )


def test_cancel_ends_the_job_and_every_process_of_it(client, jobs_server, data_dir, tmp_path):
    model = tmp_path / "slow.py"
    model.write_text(SLOW_MODEL)
    job = client.submit(train_config(data_dir, tmp_path / "train.yaml"), model)
    job_dir = jobs_server.repo / ".jobs" / job["id"]
    wait_for(lambda: client.job(job["id"])["state"] == "running" and job_pids(job_dir), 30, "running")
    pid = int((job_dir / "pid").read_text())
    assert pid in job_pids(job_dir)
    # the log streams while the job runs: its first line arrives before the job ends
    lines = client.logs(job["id"], follow=True)
    first = wait_for(lambda: (job_dir / "log.txt").stat().st_size > 0, 30, "a log line") and next(lines)
    assert first == f"job {job['id']}: 4 input files; training"
    done = client.cancel(job["id"])
    assert done["state"] == "cancelled" and done["error"] == "cancelled while running"
    assert job_pids(job_dir) == [] and not os.path.exists(f"/proc/{pid}")
    assert list(lines) == []  # the stream ended with the job
    # cancelling again changes nothing; a job that does not exist is a 404 JSON error
    assert client.cancel(job["id"])["state"] == "cancelled"
    with pytest.raises(ClientError) as err:
        client.job("20261206-000000-00000000")
    assert err.value.status == 404 and err.value.message == "no job '20261206-000000-00000000'"


def test_requests_out_of_bounds_are_refused_at_once(client, jobs_server, data_dir, tmp_path):
    cfg = train_config(data_dir, tmp_path / "train.yaml")
    for kw, message in (
        ({"cpus": 64}, "cpus must be from 1 to 4 on this server, not 64"),
        ({"memory": 100}, "memory must be at most 8 GB on this server, not 100"),
        ({"time_limit": 1e6}, "time_limit must be at most 3600 s on this server, not 1e+06"),
        ({"device": "tpu"}, "device must be cpu, cuda, cuda:N or auto, not 'tpu'"),
        ({"name": "../x"}, "invalid model name '../x': use letters, digits, '_', '.', '-' (at most 100)"),
    ):
        with pytest.raises(ClientError) as err:
            client.submit(cfg, sgd_model(), **kw)
        assert (err.value.status, err.value.message) == (400, message)
    r = HTTP.post(jobs_server.url + "/jobs", headers=jobs_server.admin, files={"model": ("m.py", b"x")})
    assert r.status_code == 400 and r.json()["error"].startswith("the form needs 'config'")


def test_a_job_past_its_time_limit_is_stopped(client, jobs_server, data_dir, tmp_path):
    model = tmp_path / "slow.py"
    model.write_text(SLOW_MODEL)
    job = client.submit(train_config(data_dir, tmp_path / "train.yaml"), model, time_limit=2)
    done = client.wait(job["id"], timeout=30, poll=0.3)
    assert done["state"] == "failed" and done["error"] == "stopped after its time limit of 2 s"
    assert job_pids(jobs_server.repo / ".jobs" / job["id"]) == []


def test_the_command_line_submits_a_folder_and_follows_it(jobs_server, data_dir, tmp_path):
    folder = tmp_path / "mlaas4hep"
    folder.mkdir()
    (folder / "files.txt").write_text(f"{data_dir / 'ttH_0.root'}\n{data_dir / 'ttbar_0.root'}\n")
    (folder / "labels.txt").write_text("1\n0\n")
    params = {"nevts": 1000, "chunk_size": 1000, "epochs": 1, "batch_size": 256, "branch": "Events"}
    params["selected_branches"] = ["MET_pt", "nJet"]
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "sgd.py").write_text(sgd_model().read_text())
    env = {**os.environ, "MLAAS4HEP_URL": jobs_server.url, "MLAAS4HEP_TOKEN": TOKEN}
    cli = [sys.executable, "-m", "mlaas4hep.cli", "client"]
    r = subprocess.run(
        [*cli, "submit", "--folder", str(folder), "--follow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    job_id = lines[0].split()[1]
    assert lines[0] == f"job {job_id} (sgd): queued"
    assert lines[-1] == "succeeded: model sgd version 1 is served"
    r = subprocess.run(
        [*cli, "fetch", job_id, "-o", str(tmp_path / "b.tar.gz")], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout == f"wrote {tmp_path / 'b.tar.gz'}\n"
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        assert {"bundle.json", "model.onnx"} <= set(tar.getnames())
    # usage mistakes: exit status 2, one line
    r = subprocess.run([*cli, "submit", "train.yaml"], env=env, capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (2, "error: submit needs CONFIG and --model FILE (or --folder DIR)\n")
    r = subprocess.run([*cli, "cancel", "nope"], env=env, capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (1, "error: the server answered 404: no job 'nope'\n")


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_restart_queues_the_job_it_interrupted_again_and_it_succeeds(how, data_dir, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    srv = ServerProcess(repo, "--jobs", "--data-dir", str(data_dir)).start()
    try:
        mark = tmp_path / "started-once"
        model = tmp_path / "slow-once.py"  # hangs on its first start only
        model.write_text(
            f"import os, time\nif not os.path.exists({str(mark)!r}):\n"
            f"    open({str(mark)!r}, 'w').close()\n    time.sleep(120)\n" + SGD_MODEL_BODY
        )
        with Client(srv.url, token=TOKEN) as c:
            job = c.submit(train_config(data_dir, tmp_path / "train.yaml"), model)
            job_dir = repo / ".jobs" / job["id"]
            wait_for(lambda: mark.exists() and job_pids(job_dir), 30, "running")
        pids = job_pids(job_dir)
        if how == "killed":  # the server dies; the job's process (its own session) lives
            srv.proc.send_signal(signal.SIGKILL)
            srv.proc.wait(10)
            assert job_pids(job_dir) == pids
        else:  # a clean stop (a rolling restart) ends the job's process and queues it
            srv.stop()
            assert job_pids(job_dir) == []
            assert json.loads((job_dir / "job.json").read_text())["state"] == "queued"
        srv.start()
        with Client(srv.url, token=TOKEN) as c:
            done = c.wait(job["id"], 120, 0.3)
        assert (done["state"], done["starts"], done["model"]) == (
            "succeeded",
            2,
            {"name": "slow-once", "version": 1},
        )
        assert done["interrupted"].startswith("the server stopped while the job was running")
        assert not any(p in job_pids(job_dir) for p in pids)  # the first run's process was ended
    finally:
        srv.stop()


def test_openapi_lists_the_jobs_routes(jobs_server):
    """/openapi.json of a server with --jobs lists exactly the routes the jobs API adds."""
    doc = HTTP.get(jobs_server.url + "/openapi.json").json()
    jobs = {(p, m) for p, ops in doc["paths"].items() if p.startswith("/jobs") for m in ops}
    assert jobs == {
        ("/jobs", "post"),
        ("/jobs", "get"),
        ("/jobs/{id}", "get"),
        ("/jobs/{id}", "delete"),
        ("/jobs/{id}/logs", "get"),
        ("/jobs/{id}/bundle", "get"),
    }
    assert "202" in doc["paths"]["/jobs"]["post"]["responses"]
    assert doc["paths"]["/jobs/{id}"]["delete"]["responses"]["403"]["content"]["application/json"]["schema"][
        "required"
    ] == ["error"]


def test_a_job_gets_the_memory_it_asked_for_and_no_more(client, data_dir, tmp_path):
    """The memory asked for is the job process's address-space limit: past it, allocations fail there."""
    hungry = tmp_path / "hungry.py"
    hungry.write_text(sgd_model().read_text() + "\nHOARD = bytearray(3 * 2**30)  # 3 GB at import\n")
    done = client.wait(
        client.submit(train_config(data_dir, tmp_path / "t.yaml"), hungry, memory=1.5)["id"], 60, 0.3
    )
    assert done["state"] == "failed" and "MemoryError" in done["error"], done["error"]
    assert done["resources"]["memory_gb"] == 1.5


def test_a_chunked_submission_past_the_upload_limit_is_refused_while_it_arrives(data_dir, tmp_path):
    # No Content-Length to refuse it on: the server must answer once the limit is
    # passed, not wait for (and spool to disk) the rest of the body.
    (tmp_path / "repo").mkdir()
    srv = ServerProcess(tmp_path / "repo", "--jobs", "--data-dir", str(data_dir), "--max-upload-mb", "1")
    srv.start()
    try:
        host, port = srv.url.split("//")[1].split(":")
        part = (
            b'--B\r\nContent-Disposition: form-data; name="model"; filename="m.py"\r\n\r\n' + b"#" * 3 * 2**20
        )
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"POST /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                + f"Authorization: {srv.admin['Authorization']}\r\n".encode()
                + b"Content-Type: multipart/form-data; boundary=B\r\n\r\n"
                + f"{len(part):x}\r\n".encode()
                + part
                + b"\r\n"
            )  # and nothing more: the body is not finished
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, answer
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert answer.endswith(b'{"error":"the submission exceeds the limit of 1048576 bytes"}')
        assert HTTP.get(srv.url + "/v2/health/ready").status_code == 200
    finally:
        srv.stop()


def test_finished_jobs_past_the_retention_are_removed_and_others_kept(data_dir, tmp_path):
    repo = tmp_path / "repo"
    jobs = repo / ".jobs"
    base = {"name": "m", "user": "admin", "kind": "config", "started": None, "error": None, "model": None}
    for job_id, state, finished in (
        ("20200101-000000-00000001", "succeeded", "2020-01-01T00:00:00Z"),  # years ago: removed
        ("20200101-000000-00000002", "failed", "2020-01-01T00:00:00Z"),  # removed
        ("20200101-000000-00000003", "succeeded", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
    ):
        (jobs / job_id).mkdir(parents=True)
        record = {**base, "id": job_id, "state": state, "created": finished, "finished": finished}
        (jobs / job_id / "job.json").write_text(json.dumps(record))
        (jobs / job_id / "log.txt").write_text("the log\n")
    srv = ServerProcess(repo, "--jobs", "--data-dir", str(data_dir), "--jobs-keep-days", "7").start()
    try:
        wait_for(lambda: not (jobs / "20200101-000000-00000001").exists(), 10, "the old job removed")
        with Client(srv.url, token=TOKEN) as c:
            assert [j["id"] for j in c.jobs()] == ["20200101-000000-00000003"]
        assert sorted(p.name for p in jobs.iterdir() if not p.name.startswith(".")) == [
            "20200101-000000-00000003"
        ]
    finally:
        srv.stop()
