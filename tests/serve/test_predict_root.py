"""predict_root: the server streams a ROOT file (local or over HTTP) and scores every entry."""

from __future__ import annotations

import io

import numpy as np
import pytest
import uproot

from mlaas4hep.client import Client, ClientError

from .conftest import HTTP


def _reference(tth_bundle, path, start, stop):
    """The oracle's scores of entries [start, stop) of a ROOT file (read here by uproot), and their ids."""
    with uproot.open(path) as f:
        t = f["Events"]
        arrays = t.arrays(
            tth_bundle.oracle.raw_inputs,
            entry_start=start,
            entry_stop=stop,
            library="ak",
            how=dict,
        )
        ids = t.arrays(["run", "luminosityBlock", "event"], entry_start=start, entry_stop=stop, library="np")
    return tth_bundle.oracle.score_raw(arrays), ids


@pytest.mark.parametrize("where", ["local", "http"])
def test_predict_root_json_and_binary(server, tth_bundle, http_server, where):
    path = tth_bundle.data_dir / "ttbar_0.root"
    url = str(path) if where == "local" else http_server.url("ttbar_0.root")
    expected, ids = _reference(tth_bundle, path, 100, 1600)
    r = HTTP.post(
        server.url + "/v2/models/tth/predict_root",
        json={"url": url, "tree": "Events", "entry_start": 100, "entry_stop": 1600, "chunk_size": 500},
    )
    assert r.status_code == 200, r.text
    outs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}
    np.testing.assert_array_equal(outs["entry"], np.arange(100, 1600))
    np.testing.assert_array_equal(outs["event"], ids["event"])
    np.testing.assert_array_equal(outs["run"], ids["run"])
    np.testing.assert_allclose(outs["scores"], expected, rtol=0, atol=1e-6)
    # the Python client asks for the binary form
    with Client(server.url) as c:
        res = c.predict_root("tth", url, entry_start=100, entry_stop=1600)
    assert res["scores"].dtype == np.float32
    np.testing.assert_allclose(res["scores"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(res["luminosityBlock"], ids["luminosityBlock"])


def test_predict_root_friend_tree(server, tth_bundle):
    path = tth_bundle.data_dir / "ttH_1.root"
    r = HTTP.post(
        server.url + "/v2/models/tth/predict_root",
        json={"url": str(path), "entry_stop": 3000, "format": "root", "friend_tree": "tthScores"},
    )
    assert r.status_code == 200, r.text
    with uproot.open(io.BytesIO(r.content)) as f:
        friend = f["tthScores"].arrays(library="np")
    expected, ids = _reference(tth_bundle, path, 0, 3000)
    assert friend["entry"].tolist() == list(range(3000))
    np.testing.assert_array_equal(friend["event"], ids["event"])
    np.testing.assert_allclose(friend["score"], expected[:, 0], rtol=0, atol=1e-6)


def test_a_name_relative_to_the_data_directory(server, tth_bundle):
    """``client predict-root MODEL ttH_0.root``: the path is taken under --data-dir, as its help says."""
    path = tth_bundle.data_dir / "ttH_0.root"
    post = lambda body: HTTP.post(server.url + "/v2/models/tth/predict_root", json=body)  # noqa: E731
    by_name = post({"url": path.name, "entry_stop": 50})
    assert by_name.status_code == 200, by_name.text
    assert by_name.json() == post({"url": str(path), "entry_stop": 50}).json()
    r = post({"url": f"../{tth_bundle.data_dir.name}/../x.root"})  # a way out stays closed
    assert r.status_code == 403 and "outside its data directories" in r.json()["error"]


def test_predict_root_refusals(server, tth_bundle, tmp_path):
    post = lambda body: HTTP.post(server.url + "/v2/models/tth/predict_root", json=body)  # noqa: E731
    r = post({"url": "/etc/passwd"})
    assert r.status_code == 403 and "outside its data directories" in r.json()["error"]
    r = post({"url": str(tth_bundle.data_dir / ".." / "etc" / "x.root")})
    assert r.status_code == 403
    r = post({"url": "ftp://example.org/x.root"})
    assert r.status_code == 403 and "does not open ftp:// URLs" in r.json()["error"]
    r = post({"url": str(tth_bundle.data_dir / "missing.root")})
    assert r.status_code == 400 and "missing.root" in r.json()["error"]
    r = post({"url": str(tth_bundle.data_dir / "ttH_0.root"), "tree": "NoSuchTree"})
    assert r.status_code == 400 and "NoSuchTree" in r.json()["error"]
    r = post({"url": str(tth_bundle.data_dir / "ttH_0.root"), "entry_start": -1})
    assert r.status_code == 400 and "entry_start" in r.json()["error"]
    r = post({"url": str(tth_bundle.data_dir / "ttH_0.root"), "format": "xml"})
    assert r.status_code == 400 and "'format' must be one of" in r.json()["error"]
    r = post({})
    assert r.status_code == 400 and "'url' must be" in r.json()["error"]
    with Client(server.url) as c, pytest.raises(ClientError) as err:
        c.predict_root("tth", "/etc/passwd")
    assert err.value.status == 403


def test_real_nanoaod_files(server, tth_bundle):
    """Real CMS NanoAOD files (written by CMSSW, not by us): every entry scored, ids carried;
    the empty one gives empty tensors."""
    path = tth_bundle.data_dir / "nano_dy.root"
    assert path.exists(), f"{path}: the shared NanoAOD test files are missing"
    expected, ids = _reference(tth_bundle, path, 0, None)
    r = HTTP.post(server.url + "/v2/models/tth/predict_root", json={"url": str(path)})
    assert r.status_code == 200, r.text
    outs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}
    assert len(outs["entry"]) == len(ids["event"]) > 0
    np.testing.assert_array_equal(outs["event"], ids["event"])
    np.testing.assert_allclose(outs["scores"], expected, rtol=0, atol=1e-6)
    empty = tth_bundle.data_dir / "nano_dy_empty.root"
    assert empty.exists(), f"{empty}: the shared NanoAOD test files are missing"
    r = HTTP.post(server.url + "/v2/models/tth/predict_root", json={"url": str(empty)})
    assert r.status_code == 200, r.text
    shapes = {o["name"]: o["shape"] for o in r.json()["outputs"]}
    assert shapes["entry"] == [0] and shapes["scores"] == [0, 1]
