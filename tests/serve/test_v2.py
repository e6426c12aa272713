"""Open Inference Protocol v2 against a real server: tritonclient in both binary modes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from .conftest import HTTP
from .oracle import ATOL


@pytest.fixture(scope="module")
def tc(server):
    c = triton.InferenceServerClient(server.url.removeprefix("http://"), concurrency=4)
    yield c
    c.close()


def test_health_and_server_metadata(tc):
    assert tc.is_server_live() and tc.is_server_ready()
    meta = tc.get_server_metadata()
    assert meta["name"] == "mlaas4hep"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


def test_model_metadata(tc, tth_bundle):
    meta = tc.get_model_metadata("tth")
    assert meta["name"] == "tth" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    F = len(tth_bundle.oracle.features)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, F]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 1]}]
    assert meta["parameters"]["labels"] == ["ttbar", "ttH"]
    assert meta["parameters"]["raw_inputs"] == tth_bundle.oracle.raw_inputs
    assert tc.get_model_metadata("tth", "1")["name"] == "tth"
    assert tc.is_model_ready("tth") and tc.is_model_ready("tth", "1")
    assert not tc.is_model_ready("tth", "7") and not tc.is_model_ready("nope")
    cfg = tc.get_model_config("tth")  # Triton's format: the batch dimension is left out of dims
    assert cfg["max_batch_size"] == 256 and cfg["input"][0] == {
        "name": "x",
        "data_type": "TYPE_FP32",
        "format": "FORMAT_NONE",
        "dims": [F],
    }


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_tritonclient_infer_equals_onnxruntime(tc, tth_bundle, binary_in, binary_out):
    x = tth_bundle.x[:300]
    expected = tth_bundle.oracle.score(x)
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = triton.InferRequestedOutput("probs", binary_data=binary_out)
    res = tc.infer("tth", [inp], outputs=[out], request_id="req-7")
    got = res.as_numpy("probs")
    assert got.dtype == np.float32 and got.shape == (300, 1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    assert res.get_response()["id"] == "req-7"
    assert res.get_response()["model_version"] == "1"


def test_tritonclient_default_outputs_and_compression(tc, tth_bundle):
    x = tth_bundle.x[300:310]
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = tc.infer("tth", [inp], model_version="1", request_compression_algorithm="gzip")
    np.testing.assert_allclose(res.as_numpy("probs"), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
    res = tc.infer("tth", [inp], request_compression_algorithm="deflate")
    np.testing.assert_allclose(res.as_numpy("probs"), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)


def test_tritonclient_errors(tc, tth_bundle):
    x = tth_bundle.x[:4, :5].copy()
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match=r"shape \[4, 5\] but the model expects \[n, 32\]"):
        tc.infer("tth", [inp])
    with pytest.raises(InferenceServerException, match="unknown model 'ghost'"):
        tc.infer("ghost", [inp])


def test_json_infer_nested_and_flat_data(server, tth_bundle):
    x = tth_bundle.x[:3]
    expected = tth_bundle.oracle.score(x)
    for data in (x.tolist(), x.ravel().tolist()):
        r = HTTP.post(
            server.url + "/v2/models/tth/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 32], "data": data}]},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "tth" and body["outputs"][0]["shape"] == [3, 1]
        np.testing.assert_allclose(
            np.array(body["outputs"][0]["data"]).reshape(3, 1), expected, rtol=0, atol=ATOL
        )


def test_binary_request_by_hand(server, tth_bundle):
    """The binary extension byte by byte: JSON header, then raw little-endian floats; binary output back."""
    x = np.ascontiguousarray(tth_bundle.x[:50])
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [50, 32],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "probs", "parameters": {"binary_data": True}}],
        }
    )
    r = HTTP.post(
        server.url + "/v2/models/tth/infer",
        content=header + x.astype("<f4").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = orjson.loads(r.content[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 200
    got = np.frombuffer(r.content[n:], dtype="<f4").reshape(50, 1)
    np.testing.assert_allclose(got, tth_bundle.oracle.score(x), rtol=0, atol=ATOL)


def test_raw_inputs_json(server, tth_bundle):
    """Raw branch values (jagged as lists per event): the server preprocesses like the bundle."""
    raw, inputs = tth_bundle.raw, tth_bundle.raw_inputs()
    r = HTTP.post(server.url + "/v2/models/tth/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(-1, 1)
    np.testing.assert_allclose(got, tth_bundle.oracle.score_raw(raw), rtol=0, atol=ATOL)
    # every raw input is needed
    missing = [i for i in inputs if i["name"] != "MET_pt"]
    r = HTTP.post(server.url + "/v2/models/tth/infer", json={"inputs": missing})
    assert r.status_code == 400 and "missing raw inputs ['MET_pt']" in r.json()["error"]


def test_repository_extension(server, tth_bundle):
    idx = HTTP.post(server.url + "/v2/repository/index").json()
    assert {"name": "tth", "version": "1"}.items() <= idx[0].items() and idx[0]["state"] == "READY"
    # load/unload need the token
    r = HTTP.post(server.url + "/v2/repository/models/tth/unload")
    assert r.status_code == 401 and "Bearer" in r.json()["error"]
    r = HTTP.post(server.url + "/v2/repository/models/tth/unload", headers=server.admin)
    assert r.status_code == 200
    try:
        assert HTTP.get(server.url + "/v2/models/tth/ready").status_code == 400
        idx = HTTP.post(server.url + "/v2/repository/index").json()
        assert idx[0]["state"] == "UNAVAILABLE"
        r = HTTP.post(
            server.url + "/v2/models/tth/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": [0.0] * 32}]},
        )
        assert r.status_code == 400 and "unloaded" in r.json()["error"]
    finally:
        r = HTTP.post(server.url + "/v2/repository/models/tth/load", headers=server.admin)
        assert r.status_code == 200, r.text
    assert HTTP.get(server.url + "/v2/models/tth/ready").status_code == 200
    r = HTTP.post(server.url + "/v2/repository/models/ghost/load", headers=server.admin)
    assert r.status_code == 404


def test_tritonclient_repository_calls(tc, server):
    index = tc.get_model_repository_index()
    assert [m["name"] for m in index] == ["tth"]
    triton_admin = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        triton_admin.unload_model("tth", headers=server.admin)
        assert not tc.is_model_ready("tth")
        triton_admin.load_model("tth", headers=server.admin)
        assert tc.is_model_ready("tth")
        with pytest.raises(InferenceServerException, match="Bearer"):
            triton_admin.unload_model("tth")
    finally:
        triton_admin.load_model("tth", headers=server.admin)
        triton_admin.close()
