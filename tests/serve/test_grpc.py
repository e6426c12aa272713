"""Triton's gRPC service with real clients: tritonclient.grpc, its generated stub, coffea's triton_wrapper.

The server runs as ``python -m mlaas4hep.serve --grpc-port N`` (a subprocess);
every score is compared with the oracle's (:mod:`.oracle`: onnxruntime on the bundle's
``model.onnx``, the preprocessing of its ``bundle.json`` recomputed with NumPy).
"""

from __future__ import annotations

import json
import ssl
import time

import numpy as np
import pytest

from .conftest import HTTP, TOKEN, install_copy, repo_of
from .grpc_helpers import GrpcServerProcess, self_signed
from .oracle import ATOL, float32_lists

grpcclient = pytest.importorskip("tritonclient.grpc")
grpc = pytest.importorskip("grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

ADMIN = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def gsrv(tth_bundle, tmp_path_factory):
    """A server with ``tth`` and a spare copy ``spare`` (for load/unload), gRPC on, no TLS."""
    srv = GrpcServerProcess(
        repo_of(tmp_path_factory, "grpc", tth=tth_bundle.path, spare=tth_bundle.path)
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(gsrv):
    c = grpcclient.InferenceServerClient(gsrv.grpc_url)
    yield c
    c.close()


def _code(err: InferenceServerException) -> str:
    return str(err.status())


def test_health_metadata_and_config(client, gsrv, tth_bundle):
    F = len(tth_bundle.oracle.features)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "mlaas4hep" and "model_repository" in meta["extensions"]
    m = client.get_model_metadata("tth", as_json=True)
    assert m["name"] == "tth" and m["versions"] == ["1"] and m["platform"] == "onnxruntime_onnx"
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", str(F)]}]
    assert m["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": ["-1", "1"]}]
    assert client.is_model_ready("tth") and client.is_model_ready("tth", "1")
    assert not client.is_model_ready("tth", "7") and not client.is_model_ready("nope")

    cfg = client.get_model_config("tth", as_json=True)["config"]
    assert cfg["max_batch_size"] == 256  # > 0: the batch dimension is left out of dims
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [256], "max_queue_delay_microseconds": "2000"}
    x = cfg["input"][0]
    assert (x["name"], x["data_type"], x["dims"]) == ("x", "TYPE_FP32", [str(F)])
    assert cfg["output"] == [{"name": "probs", "data_type": "TYPE_FP32", "dims": ["1"]}]
    # raw branches are described in parameters, not as inputs (perf_analyzer and coffea need input == metadata)
    assert [i["name"] for i in cfg["input"]] == ["x"]
    raw = {r["name"]: r for r in json.loads(cfg["parameters"]["raw_inputs"]["string_value"])}
    assert list(raw) == tth_bundle.oracle.raw_inputs
    assert raw["Jet_pt"]["dims"] == [-1] and raw["Jet_pt"]["jagged"] and raw["MET_pt"]["dims"] == [1]
    assert json.loads(cfg["parameters"]["labels"]["string_value"]) == ["ttbar", "ttH"]
    # the same configuration over HTTP, as Triton writes it (numbers as numbers)
    http_cfg = HTTP.get(f"{gsrv.url}/v2/models/tth/config").json()
    assert http_cfg["max_batch_size"] == 256 and http_cfg["input"][0]["dims"] == [F]
    assert http_cfg["dynamic_batching"] == {
        "preferred_batch_size": [256],
        "max_queue_delay_microseconds": 2000,
    }
    assert http_cfg["parameters"] == cfg["parameters"]


def test_infer_raw_contents_equals_onnxruntime(client, tth_bundle):
    x = tth_bundle.x[:1000]
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # tritonclient sends raw_input_contents
    res = client.infer("tth", [inp], outputs=[grpcclient.InferRequestedOutput("probs")], request_id="r1")
    got = res.as_numpy("probs")
    assert got.shape == (1000, 1) and res.get_response().id == "r1"
    np.testing.assert_allclose(got, tth_bundle.oracle.score(x), atol=ATOL)
    one = grpcclient.InferInput("x", [1, x.shape[1]], "FP32")
    one.set_data_from_numpy(x[:1])
    np.testing.assert_allclose(
        client.infer("tth", [one], model_version="1").as_numpy("probs"),
        tth_bundle.oracle.score(x[:1]),
        atol=ATOL,
    )


def test_infer_typed_contents(gsrv, tth_bundle):
    """ModelInfer with fp32_contents (no raw bytes), through the generated stub of tritonclient."""
    x = tth_bundle.x[:7]
    req = service_pb2.ModelInferRequest(model_name="tth", id="typed")
    t = req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(gsrv.grpc_url) as ch:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
    assert reply.model_name == "tth" and reply.model_version == "1" and reply.id == "typed"
    assert not reply.raw_output_contents  # typed in, typed out
    out = reply.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("probs", "FP32", [7, 1])
    got = np.array(out.contents.fp32_contents, dtype=np.float32).reshape(7, 1)
    np.testing.assert_allclose(got, tth_bundle.oracle.score(x), atol=ATOL)


def test_infer_raw_branches(client, tth_bundle):
    """Raw branch values over gRPC: flat ones [n], jagged ones [n, k] padded with NaN."""
    jagged = {n for n, _ in tth_bundle.oracle.jagged}
    n = 50
    raw = {k: v[:n] for k, v in tth_bundle.raw.items()}
    inputs = []
    for name in tth_bundle.oracle.raw_inputs:
        if name in jagged:
            k = max(1, max(len(e) for e in raw[name]))
            arr = np.full((n, k), np.nan, dtype=np.float32)
            for i, e in enumerate(raw[name]):
                arr[i, : len(e)] = e
        else:
            arr = np.asarray(raw[name], dtype=np.float32)
        t = grpcclient.InferInput(name, list(arr.shape), "FP32")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    got = client.infer("tth", inputs).as_numpy("probs")
    # the oracle gets what was sent: the values rounded to float32
    np.testing.assert_allclose(got, tth_bundle.oracle.score_raw(float32_lists(raw)), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    ("shape", "dtype", "code"),
    [
        ([2, 5], "FP32", "StatusCode.INVALID_ARGUMENT"),  # wrong number of features
        ([2, 32], "FP64", "StatusCode.INVALID_ARGUMENT"),  # wrong datatype
    ],
)
def test_bad_inputs(client, shape, dtype, code):
    inp = grpcclient.InferInput("x", shape, dtype)
    inp.set_data_from_numpy(np.zeros(shape, dtype=np.float32 if dtype == "FP32" else np.float64))
    with pytest.raises(InferenceServerException) as err:
        client.infer("tth", [inp])
    assert _code(err.value) == code


def test_errors_are_status_codes(gsrv, client):
    x = np.zeros((1, 32), np.float32)
    inp = grpcclient.InferInput("x", [1, 32], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", [inp])
    assert _code(err.value) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as err:
        client.infer("tth", [inp], outputs=[grpcclient.InferRequestedOutput("nope")])
    assert _code(err.value) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as err:
        client.get_model_config("nope")
    assert _code(err.value) == "StatusCode.NOT_FOUND"
    with grpc.insecure_channel(gsrv.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        bad = [
            service_pb2.ModelInferRequest(model_name="tth"),  # no inputs
            service_pb2.ModelInferRequest(  # 3 bytes for 32 floats
                model_name="tth",
                inputs=[
                    service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 32])
                ],
                raw_input_contents=[b"abc"],
            ),
            service_pb2.ModelInferRequest(  # typed contents of the wrong size
                model_name="tth",
                inputs=[
                    service_pb2.ModelInferRequest.InferInputTensor(
                        name="x",
                        datatype="FP32",
                        shape=[1, 32],
                        contents=service_pb2.InferTensorContents(fp32_contents=[1.0]),
                    )
                ],
            ),
            service_pb2.ModelInferRequest(  # negative dimension
                model_name="tth",
                inputs=[
                    service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[-1, 32])
                ],
            ),
            service_pb2.ModelInferRequest(  # a datatype we do not know
                model_name="tth",
                inputs=[
                    service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="BYTES", shape=[1])
                ],
                raw_input_contents=[b"a"],
            ),
        ]
        for req in bad:
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(req, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
    assert gsrv.alive() and client.is_server_live()


def test_repository_load_unload_and_auth(gsrv, client, tth_bundle):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {
        ("tth", "1", "READY"),
        ("spare", "1", "READY"),
    }
    for headers in (None, {"authorization": "Bearer wrong"}):
        with pytest.raises(InferenceServerException) as err:
            client.unload_model("spare", headers=headers)
        assert _code(err.value) == "StatusCode.UNAUTHENTICATED"
    client.unload_model("spare", headers=ADMIN)
    assert not client.is_model_ready("spare")
    states = {m["name"]: m["state"] for m in client.get_model_repository_index(as_json=True)["models"]}
    assert states["spare"] == "UNAVAILABLE"
    assert [m["name"] for m in client.get_model_repository_index(as_json=True, headers=None)["models"]]
    inp = grpcclient.InferInput("x", [1, 32], "FP32")
    inp.set_data_from_numpy(tth_bundle.x[:1])
    with pytest.raises(InferenceServerException) as err:
        client.infer("spare", [inp])
    assert _code(err.value) == "StatusCode.UNAVAILABLE"
    # load with a Triton-format configuration: it sets our batcher's settings
    cfg = json.dumps({"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 500}})
    client.load_model("spare", config=cfg, headers=ADMIN)
    assert client.is_model_ready("spare")
    got = client.get_model_config("spare", as_json=True)["config"]
    assert got["max_batch_size"] == 64
    assert got["dynamic_batching"] == {"preferred_batch_size": [64], "max_queue_delay_microseconds": "500"}
    np.testing.assert_allclose(
        client.infer("spare", [inp]).as_numpy("probs"),
        tth_bundle.oracle.score(tth_bundle.x[:1]),
        atol=ATOL,
    )
    with pytest.raises(InferenceServerException) as err:
        client.load_model("spare", config='{"max_batch_size": -3}', headers=ADMIN)
    assert _code(err.value) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as err:
        client.load_model("nope", headers=ADMIN)
    assert _code(err.value) == "StatusCode.NOT_FOUND"


def test_private_server_and_tls(tth_bundle, tmp_path):
    """A --private server with TLS on both protocols: the token is needed for inference too."""
    cert, key = self_signed(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    install_copy(repo, tth_bundle.path, "tth")
    srv = GrpcServerProcess(repo, "--private", tls=(cert, key)).start()
    try:
        x = tth_bundle.x[:5]
        c = grpcclient.InferenceServerClient(srv.grpc_url, ssl=True, root_certificates=str(cert))
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert c.is_server_live()  # probes stay open
        with pytest.raises(InferenceServerException) as err:
            c.infer("tth", [inp])
        assert _code(err.value) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as err:
            c.get_model_metadata("tth")
        assert _code(err.value) == "StatusCode.UNAUTHENTICATED"
        got = c.infer("tth", [inp], headers=ADMIN).as_numpy("probs")
        np.testing.assert_allclose(got, tth_bundle.oracle.score(x), atol=ATOL)
        c.close()
        plain = grpcclient.InferenceServerClient(srv.grpc_url)  # no TLS: the handshake fails
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
        plain.close()
        import httpx

        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as http:
            r = http.post(
                f"{srv.url}/v2/models/tth/infer",
                json={
                    "inputs": [
                        {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
                    ]
                },
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        assert r.status_code == 200
        np.testing.assert_allclose(
            np.array(r.json()["outputs"][0]["data"]).reshape(-1, 1),
            tth_bundle.oracle.score(x),
            atol=ATOL,
        )
    finally:
        srv.stop()


def test_workers_share_the_grpc_port_and_unbatched_config(tth_bundle, tmp_path):
    """--workers 2: each worker listens on the gRPC port; --max-batch 1: no dynamic_batching block."""
    repo = tmp_path / "repo"
    repo.mkdir()
    install_copy(repo, tth_bundle.path, "tth")
    srv = GrpcServerProcess(repo, "--workers", "2", "--max-batch", "1").start(timeout=60)
    try:
        x = tth_bundle.x[:3]
        for _ in range(4):  # new channels: the kernel spreads them over the workers
            c = grpcclient.InferenceServerClient(srv.grpc_url)
            for _ in range(50):  # a worker may still be starting: wait for the port
                try:
                    if c.is_server_ready():
                        break
                except InferenceServerException:
                    pass
                time.sleep(0.2)
            inp = grpcclient.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            np.testing.assert_allclose(
                c.infer("tth", [inp]).as_numpy("probs"), tth_bundle.oracle.score(x), atol=ATOL
            )
            cfg = c.get_model_config("tth", as_json=True)["config"]
            assert cfg["max_batch_size"] == 1024 and "dynamic_batching" not in cfg
            c.close()
    finally:
        srv.stop()
