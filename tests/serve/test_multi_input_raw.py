"""Raw branches for a model of object groups: preprocessing -> flat x -> the group layout -> named tensors.

The bundle carries a real :class:`~mlaas4hep.io.groups.GroupLayout` (jets: 4
objects of pt, eta, phi sorted by pt; event: MET_pt, HT) and the 3-input model
of :mod:`.test_multi_input`. Every way to send raw branches (in process, HTTP
v2, gRPC, TFaaS ``/json``, ``predict_root``) must score what the oracle computes
from the bundle's ``bundle.json`` and ``model.onnx`` alone.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from mlaas4hep import bundle
from mlaas4hep.io import groups as groups_mod
from mlaas4hep.io.preprocess import Preprocessor

from .conftest import HTTP, install_copy
from .grpc_helpers import GrpcServerProcess
from .oracle import ATOL, Oracle, float32_lists
from .test_multi_input import grouped_onnx

JAGGED = ["Jet_pt", "Jet_eta", "Jet_phi"]


def preprocessor() -> Preprocessor:
    args = dict(
        flat=["MET_pt", "HT"],
        jagged=[(b, 6) for b in JAGGED],  # padded to 6 in x, the group keeps the 4 leading jets
        normalize="standard",
        offset={"MET_pt": 40.0, "HT": 200.0, "Jet_pt": 50.0},
        scale={"MET_pt": 0.02, "HT": 0.005, "Jet_pt": 0.02},
        pad_value=0.0,
    )
    pre = Preprocessor(**args)
    layout = groups_mod.GroupLayout.build(
        {
            "jets": groups_mod.InputGroup(JAGGED, length=4, sort_by="Jet_pt"),
            "event": groups_mod.InputGroup(["MET_pt", "HT"]),
        },
        pre.columns,
        pre.n_features,
    )
    return Preprocessor(**args, groups=layout)


def raw_events(n: int, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 8, n)
    out: dict[str, list] = {
        "MET_pt": (30 + 40 * rng.random(n)).tolist(),
        "HT": (100 + 300 * rng.random(n)).tolist(),
    }
    for b, scale in zip(JAGGED, (80.0, 2.0, 3.0)):
        out[b] = [(scale * rng.random(int(c))).tolist() for c in counts]
    return out


@pytest.fixture(scope="module")
def rawgrouped(tmp_path_factory):
    path = tmp_path_factory.mktemp("rawgrouped") / "bundle"
    bundle.write(path, grouped_onnx(), preprocessor(), ["bkg", "sig"], name="rawgrouped", framework="onnx")
    return path


@pytest.fixture(scope="module")
def expected(rawgrouped):
    """Scores of raw events as the oracle computes them from the bundle's files (:mod:`.oracle`)."""
    return Oracle(rawgrouped).score_raw


@pytest.fixture(scope="module")
def srv(rawgrouped, tmp_path_factory):
    repo = tmp_path_factory.mktemp("rawgrouped-srv") / "repo"
    data = repo.parent / "data"
    data.mkdir()
    repo.mkdir()
    install_copy(repo, rawgrouped, "rawgrouped")
    s = GrpcServerProcess(repo, "--data-dir", str(data)).start()
    s.data = data
    yield s
    s.stop()


def test_bundle_carries_the_layout_and_the_matching_tensors(rawgrouped):
    p = bundle.load(rawgrouped)
    assert p.spec.input_names == ["jets", "jets_mask", "event"]
    assert [list(t.shape) for t in p.spec.inputs] == [[-1, 4, 3], [-1, 4], [-1, 2]]
    assert p.preprocessor.groups.names == ["jets", "event"]


def test_predict_raw_in_process(rawgrouped, expected):
    raw = raw_events(40)
    np.testing.assert_allclose(bundle.load(rawgrouped).predict_raw(raw), expected(raw), rtol=0, atol=ATOL)


def test_raw_branches_over_http_v2(srv, expected):
    raw = raw_events(25, seed=1)
    inputs = [{"name": k, "datatype": "FP64", "shape": [len(v)], "data": v} for k, v in raw.items()]
    r = HTTP.post(f"{srv.url}/v2/models/rawgrouped/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    np.testing.assert_allclose(
        np.array(out["data"], np.float32).reshape(out["shape"]), expected(raw), rtol=0, atol=ATOL
    )


def test_raw_branches_over_grpc_nan_padded(srv, expected):
    raw = raw_events(12, seed=2)
    inputs = []
    for k, v in raw.items():
        if k in JAGGED:  # a tensor cannot be ragged: NaN after each event's values
            width = max(1, max(len(e) for e in v))
            a = np.full((len(v), width), np.nan, np.float32)
            for i, e in enumerate(v):
                a[i, : len(e)] = e
        else:
            a = np.asarray(v, np.float32)
        t = grpcclient.InferInput(k, list(a.shape), "FP32")
        t.set_data_from_numpy(a)
        inputs.append(t)
    with grpcclient.InferenceServerClient(srv.grpc_url) as c:
        y = c.infer("rawgrouped", inputs).as_numpy("probs")
    np.testing.assert_allclose(y, expected(float32_lists(raw)), rtol=0, atol=ATOL)  # what was sent: float32


def test_tfaas_json_with_raw_keys(srv, expected):
    raw = raw_events(3, seed=3)
    r = HTTP.post(
        f"{srv.url}/json", json={"model": "rawgrouped", "keys": list(raw), "values": list(raw.values())}
    )
    assert r.status_code == 200, r.text
    y = expected(raw)[:, 0]
    np.testing.assert_allclose(np.array(r.json()), np.stack([1 - y, y], axis=1), rtol=0, atol=ATOL)


def test_predict_root(srv, expected):
    import uproot

    raw = raw_events(30, seed=4)
    jets = ak.zip({b.split("_")[1]: ak.Array(raw[b]) for b in JAGGED})
    with uproot.recreate(srv.data / "events.root") as f:
        f["Events"] = {
            "MET_pt": np.asarray(raw["MET_pt"]),
            "HT": np.asarray(raw["HT"]),
            "Jet": jets,
            "event": np.arange(30, dtype=np.int64),
        }
    r = HTTP.post(
        f"{srv.url}/v2/models/rawgrouped/predict_root",
        json={"url": str(srv.data / "events.root"), "tree": "Events"},
    )
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    scores = np.array(outs["scores"]["data"], np.float32).reshape(outs["scores"]["shape"])
    with uproot.open(srv.data / "events.root") as f:  # the values as the file holds them (an RNTuple)
        ev = f["Events"].arrays(["MET_pt", "HT", "Jet"])
    written = {"MET_pt": ev["MET_pt"], "HT": ev["HT"], **{b: ev["Jet"][b.split("_")[1]] for b in JAGGED}}
    np.testing.assert_allclose(scores, expected(written), rtol=0, atol=ATOL)
    assert outs["event"]["data"] == list(range(30))
