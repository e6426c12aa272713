"""Models that take several named tensors (object groups and their masks), served for real.

The model is made here with ``onnx.helper``: inputs ``jets`` FP32 ``[n, 4, 3]``,
``jets_mask`` BOOL ``[n, 4]`` and ``event`` FP32 ``[n, 2]``, output
``sigmoid(sum(jets * mask) + sum(event))``. A real server (HTTP and gRPC) serves
it; Triton's own clients call it with every input, typed and binary, and the
scores must equal onnxruntime's on the same tensors.
"""

from __future__ import annotations

import json
import shutil
import threading

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from mlaas4hep import bundle, bundle_schema
from mlaas4hep.bundle_archive import pack_directory
from mlaas4hep.bundle_spec import BundleSpec, InputError

from .conftest import HTTP, repo_of
from .grpc_helpers import GrpcServerProcess

N_JETS, N_VARS = 4, 3
NAMES = ["jets", "jets_mask", "event"]


def grouped_onnx(names: tuple[str, str, str] = ("jets", "jets_mask", "event")) -> bytes:
    """sigmoid(sum(jets * mask) + sum(event)), three named inputs, one (n, 1) output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    jets, mask, event = names
    axes12 = numpy_helper.from_array(np.array([1, 2], np.int64), "axes12")
    axes1 = numpy_helper.from_array(np.array([1], np.int64), "axes1")
    axes2 = numpy_helper.from_array(np.array([2], np.int64), "axes2")
    nodes = [
        helper.make_node("Cast", [mask], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes2"], ["m3"]),
        helper.make_node("Mul", [jets, "m3"], ["jm"]),
        helper.make_node("ReduceSum", ["jm", "axes12"], ["sj"], keepdims=0),
        helper.make_node("ReduceSum", [event, "axes1"], ["se"], keepdims=0),
        helper.make_node("Add", ["sj", "se"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "axes1"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["probs"]),
    ]
    graph = helper.make_graph(
        nodes,
        "grouped",
        [
            helper.make_tensor_value_info(jets, TensorProto.FLOAT, ["n", N_JETS, N_VARS]),
            helper.make_tensor_value_info(mask, TensorProto.BOOL, ["n", N_JETS]),
            helper.make_tensor_value_info(event, TensorProto.FLOAT, ["n", 2]),
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 1])],
        [axes12, axes1, axes2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


FEATURES = [f"jet{j}_{v}" for j in range(N_JETS) for v in range(N_VARS)] + ["e0", "e1"]


def events(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "jets": (0.3 * rng.standard_normal((n, N_JETS, N_VARS))).astype(np.float32),
        "jets_mask": rng.random((n, N_JETS)) < 0.6,
        "event": (0.3 * rng.standard_normal((n, 2))).astype(np.float32),
    }


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    path = tmp_path_factory.mktemp("grouped") / "bundle"
    bundle.write(
        path, grouped_onnx(), None, ["bkg", "sig"], name="grouped", framework="onnx", features=FEATURES
    )
    return path


@pytest.fixture(scope="module")
def reference(grouped):
    sess = ort.InferenceSession(str(grouped / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda arrays: sess.run(["probs"], arrays)[0]


@pytest.fixture(scope="module")
def gsrv(grouped, tmp_path_factory):
    srv = GrpcServerProcess(repo_of(tmp_path_factory, "grouped-srv", grouped=grouped)).start()
    yield srv
    srv.stop()


# ------------------------------------------------------------------ the bundle and its contract
def test_bundle_lists_every_tensor_in_model_order(grouped, reference):
    meta = json.loads((grouped / "bundle.json").read_text())
    assert meta["inputs"]["tensors"] == [
        {"name": "jets", "datatype": "FP32", "shape": [-1, N_JETS, N_VARS]},
        {"name": "jets_mask", "datatype": "BOOL", "shape": [-1, N_JETS]},
        {"name": "event", "datatype": "FP32", "shape": [-1, 2]},
    ]
    p = bundle.load(grouped)
    x = events(50)
    np.testing.assert_allclose(p.predict(x), reference(x), rtol=1e-6)
    with pytest.raises(InputError, match=r"missing inputs \['jets_mask'\]"):
        p.predict({"jets": x["jets"], "event": x["event"]})
    with pytest.raises(InputError, match=r"has shape \[50, 3, 3\] but the model expects \[n, 4, 3\]"):
        p.predict({**x, "jets": x["jets"][:, :3]})
    with pytest.raises(InputError, match="different numbers of events"):
        p.predict({**x, "event": x["event"][:10]})
    with pytest.raises(InputError, match=r"has no preprocessing: send the inputs \[.jets."):
        p.predict_raw({"Jet_pt": [[1.0]]})


@pytest.mark.parametrize(
    "tensors,message",
    [
        ([], "list of 1 to"),
        ([{"name": "a", "datatype": "FP32", "shape": [-1, 2]}] * 2, "appears twice"),
        ([{"name": "a", "datatype": "INT64", "shape": [-1, 2]}], "has datatype 'INT64'"),
        ([{"name": "a", "datatype": "FP32", "shape": [4, 2]}], "the batch first"),
        ([{"name": "a", "datatype": "FP32", "shape": [-1, -1]}], "the batch first"),
        ([{"name": "a", "datatype": "FP32", "shape": [-1, 0]}], "dimensions must be"),
        ([{"name": "a", "datatype": "FP32", "shape": [-1, 1000, 1000]}], "values per event"),
        ([{"name": "", "datatype": "FP32", "shape": [-1, 2]}], "needs a 'name'"),
        (["a"], "must be an object"),
    ],
)
def test_schema_checks_tensors(grouped, tensors, message):
    meta = json.loads((grouped / "bundle.json").read_text())
    meta["inputs"]["tensors"] = tensors
    with pytest.raises(bundle_schema.BundleError, match=message):
        bundle_schema.check(meta)


@pytest.mark.parametrize(
    "groups,message",
    [
        ([], "must be an object"),
        ({"width": 3, "groups": []}, "1 to 256 groups"),
        ({"width": 5, "groups": [{"name": "g", "features": ["a"]}]}, "reads 5 columns"),
        ({"width": 3, "groups": [{"features": ["a"]}]}, "'name'"),
        ({"width": 3, "groups": [{"name": "g", "features": "a"}]}, "the features of 'g'"),
        ({"width": 3, "groups": [{"name": "g", "features": ["a"], "length": 0}]}, "length of 'g'"),
    ],
)
def test_schema_checks_groups(groups, message):
    pre = {"flat": ["a"], "jagged": [["J_pt", 2]], "groups": groups}
    with pytest.raises(bundle_schema.BundleError, match=message):
        bundle_schema.check_preprocessing(pre, 3)


def test_bundle_whose_tensors_differ_from_the_model_does_not_load(grouped, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(grouped, bad)
    meta = json.loads((bad / "bundle.json").read_text())
    meta["inputs"]["tensors"][1]["name"] = "mask"
    (bad / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(bundle.BundleError, match="takes the inputs"):
        bundle.load(bad)
    spec = BundleSpec(meta)  # the contract itself is consistent: only the model disagrees
    assert spec.input_names == ["jets", "mask", "event"]


# ------------------------------------------------------------------ served over HTTP and gRPC
def test_metadata_and_triton_config_list_every_input(gsrv):
    meta = HTTP.get(f"{gsrv.url}/v2/models/grouped").json()
    assert meta["inputs"] == [
        {"name": "jets", "datatype": "FP32", "shape": [-1, N_JETS, N_VARS]},
        {"name": "jets_mask", "datatype": "BOOL", "shape": [-1, N_JETS]},
        {"name": "event", "datatype": "FP32", "shape": [-1, 2]},
    ]
    (summary,) = [m for m in HTTP.get(f"{gsrv.url}/models").json() if m["name"] == "grouped"]
    assert summary["inputs"] == meta["inputs"]
    cfg = HTTP.get(f"{gsrv.url}/v2/models/grouped/config").json()
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [
        ("jets", "TYPE_FP32", [N_JETS, N_VARS]),
        ("jets_mask", "TYPE_BOOL", [N_JETS]),
        ("event", "TYPE_FP32", [2]),
    ]
    with grpcclient.InferenceServerClient(gsrv.grpc_url) as c:
        gmeta = c.get_model_metadata("grouped", as_json=True)
        assert [(i["name"], i["datatype"]) for i in gmeta["inputs"]] == [
            ("jets", "FP32"),
            ("jets_mask", "BOOL"),
            ("event", "FP32"),
        ]
        gcfg = c.get_model_config("grouped", as_json=True)["config"]
        assert [i["data_type"] for i in gcfg["input"]] == ["TYPE_FP32", "TYPE_BOOL", "TYPE_FP32"]


def _inputs(mod, x: dict[str, np.ndarray], binary: bool | None = None) -> list:
    out = []
    for name in NAMES:
        a = x[name]
        t = mod.InferInput(name, list(a.shape), "BOOL" if a.dtype == bool else "FP32")
        if binary is None:
            t.set_data_from_numpy(a)
        else:
            t.set_data_from_numpy(a, binary_data=binary)
        out.append(t)
    return out


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_several_inputs_equal_onnxruntime(gsrv, reference, binary):
    x = events(37, seed=1)
    with httpclient.InferenceServerClient(gsrv.url.removeprefix("http://")) as c:
        out = httpclient.InferRequestedOutput("probs", binary_data=binary)
        r = c.infer("grouped", _inputs(httpclient, x, binary), outputs=[out])
    np.testing.assert_allclose(r.as_numpy("probs"), reference(x), rtol=1e-6)


def test_tritonclient_grpc_several_inputs_equal_onnxruntime(gsrv, reference):
    x = events(23, seed=2)
    with grpcclient.InferenceServerClient(gsrv.grpc_url) as c:
        r = c.infer("grouped", _inputs(grpcclient, x))
    np.testing.assert_allclose(r.as_numpy("probs"), reference(x), rtol=1e-6)


def test_grpc_typed_contents_with_bool_mask(gsrv, reference):
    x = events(5, seed=3)
    T = service_pb2.ModelInferRequest.InferInputTensor
    req = service_pb2.ModelInferRequest(
        model_name="grouped",
        inputs=[
            T(name="jets", datatype="FP32", shape=[5, N_JETS, N_VARS]),
            T(name="jets_mask", datatype="BOOL", shape=[5, N_JETS]),
            T(name="event", datatype="FP32", shape=[5, 2]),
        ],
    )
    req.inputs[0].contents.fp32_contents.extend(x["jets"].ravel().tolist())
    req.inputs[1].contents.bool_contents.extend(x["jets_mask"].ravel().tolist())
    req.inputs[2].contents.fp32_contents.extend(x["event"].ravel().tolist())
    with grpc.insecure_channel(gsrv.grpc_url) as ch:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
    got = np.array(reply.outputs[0].contents.fp32_contents, np.float32).reshape(5, 1)
    np.testing.assert_allclose(got, reference(x), rtol=1e-6)


def test_concurrent_requests_are_batched_per_tensor(gsrv, reference):
    """Requests of several clients share onnxruntime calls; each gets its own rows back."""
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with httpclient.InferenceServerClient(gsrv.url.removeprefix("http://")) as c:
                for k in range(5):
                    x = events(1 + (i + k) % 3, seed=100 * i + k)
                    y = c.infer("grouped", _inputs(httpclient, x, True)).as_numpy("probs")
                    np.testing.assert_allclose(y, reference(x), rtol=1e-6)
                    results[i * 10 + k] = y
        except BaseException as err:  # handed to the main thread
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 40


BAD = [
    (["jets", "event"], {}, "missing inputs ['jets_mask']"),
    (NAMES, {"jets_mask": ("FP32", None)}, "has datatype FP32 but the model expects BOOL"),
    (NAMES, {"event": ("FP32", (3, 3))}, "has shape [3, 3] but the model expects [n, 2]"),
    (NAMES, {"event": ("FP32", (2, 2))}, "different numbers of events"),
    ([*NAMES, "extra"], {"extra": ("FP32", (3, 1))}, "unknown inputs ['extra']"),
]


def _json_body(names: list[str], changes: dict) -> dict:
    x = events(3, seed=4)
    inputs = []
    for name in names:
        a = x.get(name, np.zeros((3, 1), np.float32))
        datatype, shape = changes.get(name, ("BOOL" if a.dtype == bool else "FP32", None))
        a = a.astype(np.float32) if datatype == "FP32" else a
        a = np.zeros(shape, np.float32) if shape is not None else a
        inputs.append(
            {"name": name, "datatype": datatype, "shape": list(a.shape), "data": a.ravel().tolist()}
        )
    return {"inputs": inputs}


@pytest.mark.parametrize("names,changes,message", BAD, ids=[b[2][:30] for b in BAD])
def test_wrong_inputs_are_400_and_invalid_argument(gsrv, names, changes, message):
    body = _json_body(names, changes)
    r = HTTP.post(f"{gsrv.url}/v2/models/grouped/infer", json=body)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    inputs = []
    for t in body["inputs"]:
        g = grpcclient.InferInput(t["name"], t["shape"], t["datatype"])
        dtype = bool if t["datatype"] == "BOOL" else np.float32
        g.set_data_from_numpy(np.array(t["data"], dtype).reshape(t["shape"]))
        inputs.append(g)
    with grpcclient.InferenceServerClient(gsrv.grpc_url) as c, pytest.raises(InferenceServerException) as err:
        c.infer("grouped", inputs)
    assert str(err.value.status()) == "StatusCode.INVALID_ARGUMENT" and message in err.value.message()


def test_tfaas_json_refuses_feature_rows_for_a_grouped_model(gsrv):
    r = HTTP.post(f"{gsrv.url}/json", json={"model": "grouped", "keys": FEATURES, "values": [0.0] * 14})
    assert r.status_code == 400 and "takes the tensors" in r.json()["error"]


def test_upload_checks_tensors(gsrv, grouped, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(grouped, bad)
    meta = json.loads((bad / "bundle.json").read_text())
    meta["inputs"]["tensors"][0]["datatype"] = "STRING"
    (bad / "bundle.json").write_text(json.dumps(meta))
    r = HTTP.post(
        f"{gsrv.url}/upload?name=bad",
        content=pack_directory(bad),
        headers={**gsrv.admin, "Content-Type": "application/gzip"},
    )
    assert r.status_code == 400 and "'inputs.tensors'" in r.json()["error"]
    r = HTTP.post(
        f"{gsrv.url}/upload?name=good",
        content=pack_directory(grouped),
        headers={**gsrv.admin, "Content-Type": "application/gzip"},
    )
    assert r.status_code == 200
    x = events(4, seed=5)
    with grpcclient.InferenceServerClient(gsrv.grpc_url) as c:
        y = c.infer("good", _inputs(grpcclient, x)).as_numpy("probs")
    assert y.shape == (4, 1)


def test_python_client_sends_named_tensors(gsrv, reference):
    from mlaas4hep.client import Client, ClientError

    x = events(6, seed=6)
    with Client(gsrv.url) as c:
        np.testing.assert_allclose(c.predict("grouped", x), reference(x), rtol=1e-6)
        with pytest.raises(ClientError) as err:
            c.predict("grouped", {"jets": x["jets"], "event": x["event"]})
    assert err.value.status == 400 and "missing inputs ['jets_mask']" in err.value.message
