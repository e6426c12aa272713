"""The repository under churn, seen by clients of real servers (issue 24, points 3, 4, 5, 8):
no 5xx, no gRPC INTERNAL, no half-deleted version called broken, no server path in any error,
one spelling per version on every protocol, read-only and KServe-style directories served,
uploads that fail at run time refused."""

from __future__ import annotations

import subprocess
import threading
import time

import httpx
import numpy as np
import pytest

from mlaas4hep.bundle_archive import pack_directory

from .conftest import HTTP, ServerProcess
from .grpc_helpers import GrpcServerProcess
from .helpers import targz
from .store_helpers import huge_constant_of_shape, small_bundle

grpc = pytest.importorskip("grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

CHURN_SECONDS = 6.0
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5, 0.1, -0.2, 0.3]}]}


def _leaks(text: str, *dirs) -> bool:
    return any(str(d) in text for d in dirs) or ".staging" in text or "/tmp/" in text


def test_churn_answers_no_5xx_and_no_server_path(tmp_path):
    data = pack_directory(small_bundle(tmp_path / "b"))
    repo = tmp_path / "repo"
    srv = GrpcServerProcess(repo, "--workers", "2").start(timeout=90)
    stop = threading.Event()
    seen: dict[str, int] = {}
    bad: list[str] = []
    lock = threading.Lock()
    current = [2]  # the version being uploaded; k - 1 the one being deleted

    def note(kind: str, ok: bool, detail: str) -> None:
        with lock:
            seen[kind] = seen.get(kind, 0) + 1
            if not ok:
                bad.append(f"{kind}: {detail[:300]}")

    def http_client(kind: str) -> None:
        with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not stop.is_set():
                k = current[0]
                if kind == "index":
                    r = c.post(srv.url + "/v2/repository/index")
                    half = r.status_code == 200 and any(
                        e["state"] == "UNAVAILABLE" and e["reason"] != "unloaded" for e in r.json()
                    )
                    note(kind, r.status_code == 200 and not half, f"{r.status_code} {r.text}")
                    continue
                url = srv.url + (
                    "/v2/models/m/infer" if kind == "infer" else f"/v2/models/m/versions/{k - 1}/infer"
                )
                r = c.post(url, json=BODY)
                ok = r.status_code in (200, 404) and not _leaks(r.text, tmp_path)
                note(kind, ok and "broken" not in r.text, f"{r.status_code} {r.text}")

    def grpc_client() -> None:
        with grpc.insecure_channel(srv.grpc_url) as ch:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            while not stop.is_set():
                k = current[0]
                for call, req in (
                    (stub.RepositoryIndex, service_pb2.RepositoryIndexRequest()),
                    (stub.ModelReady, service_pb2.ModelReadyRequest(name="m", version=str(k - 1))),
                    (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="m", version=str(k - 1))),
                ):
                    try:
                        call(req, timeout=30)
                        note("grpc", True, "")
                    except grpc.RpcError as err:
                        ok = err.code() == grpc.StatusCode.NOT_FOUND and not _leaks(
                            err.details() or "", tmp_path
                        )
                        note("grpc", ok, f"{err.code()} {err.details()}")

    clients = [
        threading.Thread(target=http_client, args=(k,)) for k in ("index", "index", "infer", "infer-old")
    ]
    clients.append(threading.Thread(target=grpc_client))
    cycles = 0
    try:
        with httpx.Client(timeout=60, headers=srv.admin) as c:
            assert c.post(srv.url + "/upload?name=m&version=1", content=data).status_code == 200
            for t in clients:
                t.start()
            deadline = time.monotonic() + CHURN_SECONDS
            k = 1
            while time.monotonic() < deadline:
                k += 1
                r = c.post(srv.url + f"/upload?name=m&version={k}", content=data)
                note("upload", r.status_code == 200, f"{r.status_code} {r.text}")
                current[0] = k
                r = c.delete(srv.url + f"/delete/m?version={k - 1}")
                note("delete", r.status_code == 200, f"{r.status_code} {r.text}")
                cycles += 1
    finally:
        stop.set()
        for t in clients:
            t.join(60)
        srv.stop()
    print(
        f"\n--workers 2, {CHURN_SECONDS:g} s of churn: {cycles} upload/delete cycles; requests {seen}; bad {len(bad)}"
    )
    assert bad == [], bad[:5]
    assert cycles >= 10 and seen.get("index", 0) >= 20 and seen.get("grpc", 0) >= 20


def test_upload_errors_name_the_member_not_the_staging_directory(tmp_path):
    good = small_bundle(tmp_path / "b")
    srv = ServerProcess(tmp_path / "repo").start()
    try:
        members = [(f.name, f.read_bytes(), b"file") for f in sorted(good.iterdir())]
        cases = {
            "bad onnx": [(n, b"junk" if n == "model.onnx" else c, k) for n, c, k in members],
            "runs out of memory": [
                (n, huge_constant_of_shape() if n == "model.onnx" else c, k) for n, c, k in members
            ],
        }
        for case, ms in cases.items():
            r = HTTP.post(srv.url + "/upload?name=x", content=targz(ms), headers=srv.admin)
            assert r.status_code == 400, (case, r.text)
            msg = r.json()["error"]
            assert msg.startswith("invalid bundle: model.onnx of 'the upload' "), msg
            assert not _leaks(msg, tmp_path), msg
        assert "running ConstantOfShape node" in msg and "fails on 2 example rows" in msg
        assert HTTP.get(srv.url + "/v2/models/x").status_code == 404
    finally:
        srv.stop()


def test_one_spelling_per_version_on_every_protocol(tmp_path):
    data = pack_directory(small_bundle(tmp_path / "b"))
    srv = GrpcServerProcess(tmp_path / "repo").start()
    try:
        assert (
            HTTP.post(srv.url + "/upload?name=m&version=1", content=data, headers=srv.admin).status_code
            == 200
        )
        assert HTTP.get(srv.url + "/v2/models/m/versions/1/ready").status_code == 200
        with grpc.insecure_channel(srv.grpc_url) as ch:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            assert stub.ModelReady(service_pb2.ModelReadyRequest(name="m", version="1"), timeout=30).ready
            for spelling in (" 1", "+1", "01", "\uff11"):
                quoted = httpx.URL(srv.url + "/v2/models/m/versions/").join(spelling.replace(" ", "%20"))
                for r in (
                    HTTP.get(str(quoted) + "/ready"),
                    HTTP.post(str(quoted) + "/infer", json=BODY),
                    HTTP.post(
                        srv.url + "/upload",
                        params={"name": "m", "version": spelling},
                        content=data,
                        headers=srv.admin,
                    ),
                    HTTP.delete(srv.url + "/delete/m", params={"version": spelling}, headers=srv.admin),
                ):
                    assert r.status_code == 400, (spelling, r.request.url, r.status_code, r.text)
                    assert "invalid model version" in r.json()["error"], r.text
                ready = stub.ModelReady(service_pb2.ModelReadyRequest(name="m", version=spelling), timeout=30)
                assert not ready.ready, spelling  # Triton: what does not resolve is not ready
                with pytest.raises(grpc.RpcError) as err:
                    stub.ModelMetadata(
                        service_pb2.ModelMetadataRequest(name="m", version=spelling), timeout=30
                    )
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, spelling
                assert "invalid model version" in err.value.details()
        assert HTTP.get(srv.url + "/v2/models/m").json()["versions"] == ["1"]
    finally:
        srv.stop()


def test_a_read_only_repository_is_served_and_refuses_uploads(tmp_path):
    src = tmp_path / "published" / "repo"
    small_bundle(src / "m" / "1", name="m")
    ro = tmp_path / "ro" / "repo"
    ro.mkdir(parents=True)
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount (needs root): {r.stderr.decode().strip()}")
    try:
        srv = GrpcServerProcess(ro).start()
        try:
            r = HTTP.post(srv.url + "/v2/models/m/infer", json=BODY)
            assert r.status_code == 200, r.text
            r = HTTP.post(
                srv.url + "/upload?name=n", content=pack_directory(src / "m" / "1"), headers=srv.admin
            )
            assert r.status_code == 403 and r.json()["error"].startswith(
                "the repository 'repo' is read-only: cannot install a model"
            ), r.text
            r = HTTP.post(srv.url + "/v2/repository/models/m/unload", headers=srv.admin)
            assert r.status_code == 403 and "read-only" in r.json()["error"], r.text
            with grpc.insecure_channel(srv.grpc_url) as ch:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
                with pytest.raises(grpc.RpcError) as err:
                    stub.RepositoryModelUnload(
                        service_pb2.RepositoryModelUnloadRequest(model_name="m"),
                        metadata=[("authorization", f"Bearer {srv.token}")],
                        timeout=30,
                    )
                assert "read-only" in err.value.details()
                assert err.value.code() != grpc.StatusCode.INTERNAL
        finally:
            srv.stop()
        assert sorted(p.name for p in src.iterdir()) == ["m"]  # nothing written: no lock, no staging
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_a_kserve_style_directory_is_served_as_its_one_model(tmp_path):
    models = tmp_path / "mnt" / "models"
    path = small_bundle(models, name="higgs")
    srv = ServerProcess(models).start()
    try:
        r = HTTP.post(srv.url + "/v2/models/higgs/infer", json=BODY)
        assert r.status_code == 200, r.text
        assert HTTP.post(srv.url + "/v2/repository/index").json() == [
            {"name": "higgs", "version": "1", "state": "READY", "reason": ""}
        ]
        y = np.array(r.json()["outputs"][0]["data"], np.float32)
        from mlaas4hep import bundle

        expected = bundle.load(path).predict(np.array([BODY["inputs"][0]["data"]], np.float32)).ravel()
        np.testing.assert_allclose(y, expected, rtol=1e-6)
    finally:
        srv.stop()
    assert sorted(p.name for p in models.iterdir()) == [
        "bundle.json",
        "labels.txt",
        "model.onnx",
        "params.json",
    ]
