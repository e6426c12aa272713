"""The TFaaS API with curl-style requests, uploads of every kind, and persistence across restarts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mlaas4hep.bundle_archive import pack_directory

from .conftest import HTTP, HTTP_NEW, ServerProcess, mlp_onnx
from .helpers import bundle_members, targz


def test_json_one_row(server, tth_bundle):
    """TFaaS /json: keys and values of one row; the answer is the class probabilities in label order."""
    x = tth_bundle.x[0]
    keys = tth_bundle.predictor.features
    r = HTTP.post(
        server.url + "/json", content=json.dumps({"keys": keys, "values": x.tolist(), "model": "tth"})
    )
    assert r.status_code == 200, r.text
    p = tth_bundle.predictor.predict(x[None, :])[0, 0]
    assert r.json() == pytest.approx([1 - p, p], abs=1e-6)


def test_json_keys_in_any_order_and_many_rows(server, tth_bundle):
    keys = tth_bundle.predictor.features
    perm = np.random.default_rng(0).permutation(len(keys))
    x = tth_bundle.x[:5]
    r = HTTP.post(
        server.url + "/json",
        json={"keys": [keys[i] for i in perm], "values": x[:, perm].tolist(), "model": "tth"},
    )
    assert r.status_code == 200, r.text
    p = tth_bundle.predictor.predict(x)[:, 0]
    np.testing.assert_allclose(np.array(r.json()), np.stack([1 - p, p], axis=1), atol=1e-6)


def test_json_raw_branches(server, tth_bundle):
    """/json also takes raw branches: one event, a number per flat branch and a list per jagged one."""
    raw = {k: v[3] for k, v in tth_bundle.raw.items()}
    r = HTTP.post(
        server.url + "/json", json={"keys": list(raw), "values": list(raw.values()), "model": "tth"}
    )
    assert r.status_code == 200, r.text
    p = tth_bundle.predictor.predict_raw({k: [v] for k, v in raw.items()})[0, 0]
    assert r.json() == pytest.approx([1 - p, p], abs=1e-6)


def test_models_and_status(server, tth_bundle):
    models = HTTP.get(server.url + "/models").json()
    m = next(m for m in models if m["name"] == "tth")
    assert m["input_node"] == "x" and m["output_node"] == "probs" and m["labels"] == "labels.txt"
    assert m["label_names"] == ["ttbar", "ttH"] and m["versions"] == [1] and m["metrics"] == {"auc": 0.5}
    assert m["n_features"] == 32 and m["description"] == "test MLP on ttH vs ttbar"
    st = HTTP.get(server.url + "/status").json()
    assert st["status"] == "ok" and "tth" in st["models"] and st["auth"] is True


def test_metrics(server, tth_bundle):
    HTTP.post(
        server.url + "/json",
        json={"keys": tth_bundle.predictor.features, "values": tth_bundle.x[0].tolist(), "model": "tth"},
    )
    text = HTTP.get(server.url + "/metrics").text
    assert 'mlaas4hep_inference_requests_total{model="tth",status="200"}' in text
    assert 'mlaas4hep_request_latency_seconds_bucket{le="0.001",model="tth"}' in text
    assert "mlaas4hep_batch_size_rows_count" in text and "mlaas4hep_queue_seconds_count" in text
    assert 'mlaas4hep_http_requests_total{method="POST",route="/json",status="200"}' in text
    # storage retries of predict_root: none happened, but operators can alert on them
    assert (
        "mlaas4hep_io_retries_total 0.0" in text and "mlaas4hep_io_retry_budget_exhausted_total 0.0" in text
    )


def _predict(url: str, name: str, x: np.ndarray) -> np.ndarray:
    r = HTTP.post(
        f"{url}/v2/models/{name}/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]},
    )
    assert r.status_code == 200, r.text
    o = r.json()["outputs"][0]
    return np.array(o["data"], dtype=np.float32).reshape(o["shape"])


def test_uploads_versions_delete_and_persistence(tmp_path, tth_bundle):
    """Every upload form; versions; delete; and the repository survives a restart."""
    repo = tmp_path / "repo"
    srv = ServerProcess(repo).start()
    x = tth_bundle.x[:20]
    try:
        # 1. raw .tar.gz body, files at the archive root
        r = HTTP.post(
            srv.url + "/upload",
            content=pack_directory(tth_bundle.path),
            headers={"Content-Type": "application/gzip", **srv.admin},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"name": "tth", "version": 1, "status": "installed"}
        # 2. multipart field "bundle", files under one folder, another name; a second version of it
        data = targz(bundle_members(tth_bundle.path, "tth/"))
        for version in (1, 2):
            r = HTTP.post(
                srv.url + "/upload?name=other", files={"bundle": ("b.tar.gz", data)}, headers=srv.admin
            )
            assert r.status_code == 200, r.text
            assert r.json()["version"] == version
        # 3. TFaaS form: name, params, model, labels (no bundle.json), another MLP
        onnx2 = mlp_onnx(32, seed=11)
        params = {
            "name": "tfaas",
            "model": "model.pb",
            "labels": "labels.txt",
            "input_node": "x",
            "output_node": "probs",
            "description": "old-style upload",
        }
        r = HTTP.post(
            srv.url + "/upload",
            headers=srv.admin,
            data={"name": "tfaas"},
            files={
                "model": ("model.onnx", onnx2),
                "params": ("params.json", json.dumps(params)),
                "labels": ("labels.txt", b"bkg\nsig\n"),
            },
        )
        assert r.status_code == 200, r.text
        # the explicit version already taken: 409
        r = HTTP.post(srv.url + "/upload?version=2&name=other", content=data, headers=srv.admin)
        assert r.status_code == 409 and "already has version 2" in r.json()["error"]

        models = {m["name"]: m for m in HTTP.get(srv.url + "/models").json()}
        assert set(models) == {"tth", "other", "tfaas"}
        assert models["other"]["versions"] == [1, 2]
        assert models["tfaas"]["label_names"] == ["bkg", "sig"]
        assert models["tfaas"]["description"] == "old-style upload"
        expected = tth_bundle.predictor.predict(x)
        np.testing.assert_allclose(_predict(srv.url, "other", x), expected, atol=1e-6)
        tfaas_ref = _predict(srv.url, "tfaas", x)
        assert not np.allclose(tfaas_ref, expected)
        r = HTTP.post(
            srv.url + "/json",
            json={"model": "tfaas", "keys": [f"x{i}" for i in range(32)], "values": x[0].tolist()},
        )
        assert r.json() == pytest.approx([1 - tfaas_ref[0, 0], tfaas_ref[0, 0]], abs=1e-6)

        # delete one version, then a whole model
        r = HTTP.delete(srv.url + "/delete/other?version=1", headers=srv.admin)
        assert r.status_code == 200 and r.json()["deleted_versions"] == [1]
        r = HTTP.delete(srv.url + "/delete/tth", headers=srv.admin)
        assert r.status_code == 200 and r.json()["deleted_versions"] == [1]
        assert HTTP.delete(srv.url + "/delete/tth", headers=srv.admin).status_code == 404
        assert not (repo / "tth").exists()
    finally:
        srv.stop()
    # restart on the same directory: what was installed is still served, what was deleted is gone
    srv = ServerProcess(repo).start()
    try:
        models = {m["name"]: m for m in HTTP.get(srv.url + "/models").json()}
        assert set(models) == {"other", "tfaas"} and models["other"]["versions"] == [2]
        np.testing.assert_allclose(_predict(srv.url, "other", x), tth_bundle.predictor.predict(x), atol=1e-6)
        np.testing.assert_allclose(_predict(srv.url, "tfaas", x), tfaas_ref, atol=1e-6)
        assert HTTP.post(srv.url + "/v2/models/tth/infer", json={}).status_code == 404
        assert not list((repo / ".staging").iterdir())
    finally:
        srv.stop()


def test_crash_leftovers_are_invisible(tmp_path, tth_bundle):
    """A half-written upload (as a crash would leave in .staging) and a version folder without
    bundle.json are never served (only listed as broken), and the staging leftovers are removed at start."""
    repo = tmp_path / "repo"
    (repo / ".staging" / "upload-x").mkdir(parents=True)
    shutil.copy(tth_bundle.path / "model.onnx", repo / ".staging" / "upload-x" / "model.onnx")
    (repo / "half" / "1").mkdir(parents=True)
    shutil.copy(tth_bundle.path / "model.onnx", repo / "half" / "1" / "model.onnx")
    srv = ServerProcess(repo).start()
    try:
        assert HTTP.get(srv.url + "/models").json() == [
            {"name": "half", "version": "1", "broken": True, "error": "no bundle.json"}
        ]
        assert HTTP.get(srv.url + "/v2/models/half").status_code == 404
        assert not (repo / ".staging" / "upload-x").exists()
    finally:
        srv.stop()


def test_two_workers_share_the_repository(tmp_path, tth_bundle):
    """With --workers 2, an upload, an unload or a delete answered by one process is seen by the other."""
    srv = ServerProcess(tmp_path / "repo", "--workers", "2").start()
    x = tth_bundle.x[:2]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 32], "data": x.tolist()}]}
    try:
        r = HTTP.post(srv.url + "/upload", content=pack_directory(tth_bundle.path), headers=srv.admin)
        assert r.status_code == 200, r.text
        for _ in range(20):  # a new connection each time: both workers answer some
            r = HTTP_NEW.post(srv.url + "/v2/models/tth/infer", json=body)
            assert r.status_code == 200, r.text
        HTTP.post(srv.url + "/v2/repository/models/tth/unload", headers=srv.admin).raise_for_status()
        assert {HTTP_NEW.get(srv.url + "/v2/models/tth/ready").status_code for _ in range(20)} == {400}
        HTTP.post(srv.url + "/v2/repository/models/tth/load", headers=srv.admin).raise_for_status()
        assert {HTTP_NEW.get(srv.url + "/v2/models/tth/ready").status_code for _ in range(20)} == {200}
        HTTP.delete(srv.url + "/delete/tth", headers=srv.admin).raise_for_status()
        assert {
            HTTP_NEW.post(srv.url + "/v2/models/tth/infer", json=body).status_code for _ in range(20)
        } == {404}
    finally:
        srv.stop()
