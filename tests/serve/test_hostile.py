"""Hostile requests and hostile bundles (issue 10, problems 3 to 6).

What a user relies on: whatever a client sends and whatever lies in the
repository directory, the server answers 4xx with ``{"error": ...}`` (never a
5xx), keeps serving the good models, and reports the bad entries in ``/models``
with the reason; what one request may cost (memory, CPU) is bounded.
"""

from __future__ import annotations

import json
import shutil

import pytest

from mlaas4hep import bundle
from mlaas4hep.io.preprocess import Preprocessor

from .conftest import HTTP, ServerProcess, install_copy, mlp_onnx
from .helpers import bundle_members, targz

HUGE = 99999999999999999999999999  # > 2**63


def _error(r, status: int, text: str = "") -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert text in msg, msg
    return msg


def _edited(src, dst, edit) -> bytes:
    """A copy of bundle ``src`` in ``dst`` with ``edit(meta)`` applied to its bundle.json; its .tar.gz."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    edit(meta)
    (dst / "bundle.json").write_text(json.dumps(meta))
    return targz(bundle_members(dst))


def _set(*path, value):
    def edit(meta):
        d = meta
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return edit


# what issue 10 found installed (and then broke the server), and what else the schema bounds
BAD_META = {
    "version above 2**63": (_set("version", value=HUGE), "'version' must be an integer"),
    "version zero": (_set("version", value=0), "'version' must be an integer"),
    "labels as dicts": (_set("outputs", "labels", value=[{"a": 1}, {"b": 2}]), "'outputs.labels'"),
    "output shape -5": (_set("outputs", "shape", value=[-1, -5]), "'outputs.shape'"),
    "output shape 10**12": (_set("outputs", "shape", value=[-1, 10**12]), "'outputs.shape'"),
    "normalise bogus": (_set("inputs", "preprocessing", "normalize", value="bogus"), "normalize"),
    "jagged length -6": (
        lambda m: m["inputs"]["preprocessing"]["jagged"][0].__setitem__(1, -6),
        "the length of",
    ),
    "jagged length 10**9": (
        lambda m: m["inputs"]["preprocessing"]["jagged"][0].__setitem__(1, 10**9),
        "the length of",
    ),
    "max_delay_ms 1e300": (_set("serving", value={"max_delay_ms": 1e300}), "'max_delay_ms'"),
    "max_batch 0": (_set("serving", value={"max_batch": 0}), "'max_batch'"),
    "power tower": (
        _set("inputs", "preprocessing", "new_variables", value={"X": "9**9**7"}),
        "power of a power",
    ),
    "huge constant exponent": (
        _set("inputs", "preprocessing", "new_variables", value={"X": "2**(10*10)"}),
        "constant exponent",
    ),
    "huge constant": (_set("inputs", "preprocessing", "selection", value="MET_pt > 1e300"), "constants"),
    "offset not a number": (_set("inputs", "preprocessing", "offset", value={"MET_pt": "x"}), "offset"),
    "features not strings": (_set("inputs", "features", value=[1, 2]), "'inputs.features'"),
}


@pytest.fixture(scope="module")
def plain(tth_bundle, tmp_path_factory):
    """A server with model ``tth`` and no option beyond the token (the defaults under test)."""
    repo = tmp_path_factory.mktemp("plain") / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    srv = ServerProcess(repo).start()
    yield srv
    srv.stop()


# ----------------------------------------------------------------- problem 3: malformed tensors
@pytest.mark.parametrize(
    "tensor",
    [
        {"name": "features", "datatype": {}, "shape": [], "data": []},  # the case issue 10 found
        {"name": "x", "datatype": [], "shape": [1, 32], "data": []},
        {"name": "x", "datatype": None, "shape": [1, 32], "data": [0.0] * 32},
        {"name": {}, "datatype": "FP32", "shape": [1, 32], "data": [0.0] * 32},
        {"name": "x", "datatype": "FP32", "shape": {}, "data": [0.0] * 32},
        {"name": "x", "datatype": "FP32", "shape": [1, 32], "data": {}, "parameters": []},
    ],
)
def test_malformed_tensor_is_a_4xx(plain, tensor):
    r = HTTP.post(plain.url + "/v2/models/tth/infer", json={"inputs": [tensor]})
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["error"], str)
    assert HTTP.get(plain.url + "/v2/health/live").status_code == 200


# ----------------------------------------------------------------- problem 4: versions
def test_version_above_2_63_is_refused_at_upload(tmp_path, tth_bundle):
    srv = ServerProcess(tmp_path / "repo").start()
    try:
        data = targz(bundle_members(tth_bundle.path))
        for v in (str(HUGE), str(2**63), "-1", "0", "1e3", "01x"):
            r = HTTP.post(srv.url + f"/upload?name=tth&version={v}", content=data, headers=srv.admin)
            _error(r, 400, "versions are integers from 1 to 2**63-1")
        bad = _edited(tth_bundle.path, tmp_path / "b", _set("version", value=HUGE))
        _error(HTTP.post(srv.url + "/upload", content=bad, headers=srv.admin), 400, "'version'")
        r = HTTP.post(srv.url + f"/upload?version={2**63 - 1}", content=data, headers=srv.admin)
        assert r.status_code == 200 and r.json()["version"] == 2**63 - 1, r.text
        r = HTTP.get(srv.url + "/models")
        assert r.status_code == 200 and r.json()[0]["versions"] == [2**63 - 1]
        _error(HTTP.get(srv.url + f"/v2/models/tth/versions/{HUGE}"), 400, "versions are integers")
        # no version left after the largest: refused, not wrapped around or overflowed
        last = _edited(tth_bundle.path, tmp_path / "last", _set("version", value=2**63 - 1))
        r = HTTP.post(srv.url + "/upload", content=last, headers=srv.admin)
        _error(r, 409, "no version number left")
    finally:
        srv.stop()


def test_version_above_2_63_on_disk_is_skipped_and_reported(tmp_path, tth_bundle):
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth", 1)
    install_copy(repo, tth_bundle.path, "tth", HUGE)  # a directory named 99999999999999999999999999
    install_copy(repo, tth_bundle.path, "big", 2)
    meta = json.loads((repo / "big" / "2" / "bundle.json").read_text())
    meta["version"] = HUGE
    (repo / "big" / "2" / "bundle.json").write_text(json.dumps(meta))
    for _ in range(2):  # and across restarts
        srv = ServerProcess(repo).start()
        try:
            r = HTTP.get(srv.url + "/models")
            assert r.status_code == 200, r.text
            served = [m for m in r.json() if not m.get("broken")]
            assert [(m["name"], m["versions"]) for m in served] == [("tth", [1])]
            broken = {(m["name"], m["version"]): m["error"] for m in r.json() if m.get("broken")}
            assert set(broken) == {("tth", str(HUGE)), ("big", "2")}
            assert "2**63-1" in broken[("tth", str(HUGE))] and "'version'" in broken[("big", "2")]
            assert HTTP.get(srv.url + "/v2/models/tth").status_code == 200
            _error(HTTP.get(srv.url + "/v2/models/big"), 404, "unknown model")
            index = HTTP.post(srv.url + "/v2/repository/index").json()
            assert {
                "name": "big",
                "version": "2",
                "state": "UNAVAILABLE",
                "reason": broken[("big", "2")],
            } in index
        finally:
            srv.stop()


# ----------------------------------------------------------------- problem 5: bundle.json schema
def test_bad_bundle_json_is_refused_at_upload(tmp_path, tth_bundle):
    srv = ServerProcess(tmp_path / "repo").start()
    try:
        for i, (case, (edit, text)) in enumerate(BAD_META.items()):
            data = _edited(tth_bundle.path, tmp_path / f"b{i}", edit)
            r = HTTP.post(srv.url + "/upload?name=bad", content=data, headers=srv.admin)
            assert r.status_code == 400, (case, r.text)
            assert "invalid bundle" in r.json()["error"] and text in r.json()["error"], (case, r.json())
        assert HTTP.get(srv.url + "/models").json() == []
    finally:
        srv.stop()


def test_bad_bundle_json_on_disk_is_skipped_and_reported(tmp_path, tth_bundle):
    """A repository holding every bad case still starts, serves the good model, answers no 5xx
    on any route of the bad ones, and lists each of them with its reason."""
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "good")
    names = {}
    for i, (case, (edit, _)) in enumerate(BAD_META.items()):
        names[f"bad{i}"] = case
        _edited(tth_bundle.path, repo / f"bad{i}" / "1", edit)
    (repo / "good" / "serving.json").write_text('{"max_delay_ms": 1e300}')  # ignored, with a log line
    srv = ServerProcess(repo).start()
    try:
        models = HTTP.get(srv.url + "/models").json()
        assert [m["name"] for m in models if not m.get("broken")] == ["good"]
        broken = {m["name"]: m["error"] for m in models if m.get("broken")}
        for name, case in names.items():
            assert BAD_META[case][1] in broken.get(name, ""), (case, broken.get(name))
        for name in names:
            for method, path in (
                ("GET", f"/v2/models/{name}"),
                ("GET", f"/v2/models/{name}/config"),
                ("GET", f"/v2/models/{name}/ready"),
                ("POST", f"/v2/models/{name}/infer"),
            ):
                r = HTTP.request(method, srv.url + path, json={"inputs": []})
                _error(r, 404, "unknown model")
        r = HTTP.get(srv.url + "/v2/models/good/config")
        assert r.status_code == 200 and r.json()["dynamic_batching"]["max_queue_delay_microseconds"] < 10**7
        x = tth_bundle.x[:2]
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 32], "data": x.ravel().tolist()}]}
        assert HTTP.post(srv.url + "/v2/models/good/infer", json=body).status_code == 200
        states = {e["name"]: e["state"] for e in HTTP.post(srv.url + "/v2/repository/index").json()}
        assert states["good"] == "READY" and {states[n] for n in names} == {"UNAVAILABLE"}
    finally:
        srv.stop()
    assert "skipping" in srv.log.read_text()


def test_serving_settings_are_bounded(plain):
    r = HTTP.post(
        plain.url + "/v2/repository/models/tth/load",
        json={"parameters": {"config": {"max_delay_ms": 1e6}}},  # 17 minutes per batch
        headers=plain.admin,
    )
    _error(r, 400, "'max_delay_ms' must be a number from 0 to")
    r = HTTP.post(
        plain.url + "/v2/repository/models/tth/load",
        json={"parameters": {"config": {"max_batch": 10**9}}},
        headers=plain.admin,
    )
    _error(r, 400, "'max_batch' must be an integer")
    assert HTTP.get(plain.url + "/v2/models/tth/config").status_code == 200


# ----------------------------------------------------------------- problem 5: memory per request
def test_events_times_features_is_bounded(tmp_path):
    """A wide model (the largest the schema allows: 10 collections x 10,000 slots) and a raw
    request of 400 events: 40 million values, more than the server's limit, refused with 413
    before anything is allocated; a request within the limit is served."""
    jagged = [(f"C{i}_pt", 10_000) for i in range(10)]
    pre = Preprocessor(flat=[], jagged=jagged, normalize="none")
    path = bundle.write(
        tmp_path / "wide",
        mlp_onnx(pre.n_features, hidden=1),
        pre,
        ["b", "s"],
        name="wide",
        framework="onnx",
    )
    repo = tmp_path / "repo"
    install_copy(repo, path, "wide")
    srv = ServerProcess(repo).start()
    try:

        def raw(n):
            return {
                "inputs": [
                    {"name": n_, "datatype": "FP32", "shape": [n], "data": [[1.0]] * n} for n_, _ in jagged
                ]
            }

        r = HTTP.post(srv.url + "/v2/models/wide/infer", json=raw(400))
        _error(r, 413, "exceed this server's limit")
        r = HTTP.post(srv.url + "/v2/models/wide/infer", json=raw(2))
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["shape"] == [2, 1]
    finally:
        srv.stop()


# ----------------------------------------------------------------- problem 6: expressions
def test_costly_expressions_are_refused(tmp_path, tth_bundle):
    srv = ServerProcess(tmp_path / "repo").start()
    try:
        for i, src in enumerate(["9**9**7", "(9**64)**64", "MET_pt * " + " * ".join(["1"] * 300)]):
            data = _edited(
                tth_bundle.path,
                tmp_path / f"e{i}",
                _set("inputs", "preprocessing", "new_variables", value={"X": src}),
            )
            _error(HTTP.post(srv.url + "/upload?name=e", content=data, headers=srv.admin), 400, "expression")
        ok = _edited(  # a cheap expression is fine
            tth_bundle.path,
            tmp_path / "ok",
            _set("inputs", "preprocessing", "new_variables", value={"X": "sqrt(MET_pt**2 + 1)"}),
        )
        assert HTTP.post(srv.url + "/upload?name=ok", content=ok, headers=srv.admin).status_code == 200
    finally:
        srv.stop()
