"""Every bad request gets a 4xx with {"error": ...}; auth refusals; hostile archives.

The server must never answer 500 to client input, and must keep serving.
"""

from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
import orjson
import pytest

from mlaas4hep.bundle import BundleError
from mlaas4hep.bundle_archive import pack_directory, read_archive

from .conftest import HTTP, ServerProcess
from .helpers import bundle_members, targz

INFER = "/v2/models/tth/infer"


def _x(n=1, f=32, dt="FP32", data=None, name="x", shape=None):
    return {
        "name": name,
        "datatype": dt,
        "shape": shape or [n, f],
        "data": data if data is not None else [0.5] * (n * f),
    }


BAD_INFER = [
    ("malformed JSON", b'{"inputs": [', {}, 400, "malformed JSON"),
    ("not an object", b"[1, 2]", {}, 400, "must be a JSON object"),
    ("no inputs", b"{}", {}, 400, "'inputs' must be a non-empty list"),
    ("empty inputs", b'{"inputs": []}', {}, 400, "'inputs' must be a non-empty list"),
    ("input not object", b'{"inputs": [3]}', {}, 400, "input #0 must be an object"),
    (
        "no name",
        orjson.dumps({"inputs": [{"datatype": "FP32", "shape": [1, 32], "data": [0] * 32}]}),
        {},
        400,
        "has no 'name'",
    ),
    ("bad datatype", orjson.dumps({"inputs": [_x(dt="FP128")]}), {}, 400, "unsupported datatype 'FP128'"),
    ("BYTES datatype", orjson.dumps({"inputs": [_x(dt="BYTES")]}), {}, 400, "unsupported datatype 'BYTES'"),
    (
        "wrong datatype",
        orjson.dumps({"inputs": [_x(dt="FP64")]}),
        {},
        400,
        "has datatype FP64 but the model expects FP32",
    ),
    (
        "wrong width",
        orjson.dumps({"inputs": [_x(f=31)]}),
        {},
        400,
        "has shape [1, 31] but the model expects [n, 32]",
    ),
    (
        "1-d shape",
        orjson.dumps({"inputs": [_x(shape=[32])]}),
        {},
        400,
        "has shape [32] but the model expects [n, 32]",
    ),
    ("negative shape", orjson.dumps({"inputs": [_x(shape=[-1, 32])]}), {}, 400, "'shape' must be a list"),
    ("shape not list", orjson.dumps({"inputs": [_x(shape="1x32")]}), {}, 400, "'shape' must be a list"),
    (
        "data too short",
        orjson.dumps({"inputs": [_x(data=[0.1] * 31)]}),
        {},
        400,
        "holds 31 values but shape [1, 32] needs 32",
    ),
    (
        "data strings",
        orjson.dumps({"inputs": [_x(data=["a"] * 32)]}),
        {},
        400,
        "is not a list of FP32 numbers",
    ),
    ("data null", orjson.dumps({"inputs": [_x(data=[None] * 32)]}), {}, 400, "is not a list of FP32 numbers"),
    (
        "data ragged",
        orjson.dumps({"inputs": [_x(n=2, data=[[0.1] * 32, [0.1] * 31])]}),
        {},
        400,
        "is not a list of FP32",
    ),
    ("data not list", orjson.dumps({"inputs": [_x(data={"a": 1})]}), {}, 400, "'data' must be a list"),
    (
        "no data",
        orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32]}]}),
        {},
        400,
        "has no 'data'",
    ),
    ("duplicate input", orjson.dumps({"inputs": [_x(), _x()]}), {}, 400, "appears twice"),
    ("unknown input", orjson.dumps({"inputs": [_x(name="y")]}), {}, 400, "unknown inputs ['y']"),
    (
        "unknown output",
        orjson.dumps({"inputs": [_x()], "outputs": [{"name": "zz"}]}),
        {},
        400,
        "unknown output 'zz'",
    ),
    (
        "outputs not list",
        orjson.dumps({"inputs": [_x()], "outputs": "probs"}),
        {},
        400,
        "'outputs' must be a list",
    ),
    ("id not string", orjson.dumps({"inputs": [_x()], "id": 5}), {}, 400, "'id' must be a string"),
    (
        "raw jagged mixed",
        orjson.dumps(
            {
                "inputs": [
                    {"name": "MET_pt", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]},
                    {"name": "Jet_pt", "datatype": "FP32", "shape": [2], "data": [[1.0], 3.0]},
                ]
            }
        ),
        {},
        400,
        "missing raw inputs",
    ),
    ("header length not int", b"{}", {"Inference-Header-Content-Length": "abc"}, 400, "must be an integer"),
    ("header length too big", b"{}", {"Inference-Header-Content-Length": "99"}, 400, "does not fit the body"),
    ("unsupported encoding", b"{}", {"Content-Encoding": "br"}, 415, "unsupported Content-Encoding 'br'"),
    ("corrupt gzip", b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"}, 400, "body is corrupt"),
]


@pytest.mark.parametrize("case,body,headers,status,message", BAD_INFER, ids=[c[0] for c in BAD_INFER])
def test_bad_infer_requests(server, case, body, headers, status, message):
    r = HTTP.post(server.url + INFER, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]


def _binary(x: np.ndarray, size: int | None = None, extra: bytes = b"", hlen_delta: int = 0):
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes if size is None else size},
                }
            ]
        }
    )
    return header + x.tobytes() + extra, {"Inference-Header-Content-Length": str(len(header) + hlen_delta)}


@pytest.mark.parametrize(
    "kind,message",
    [
        ("size mismatch", "binary_data_size 100 does not match shape [2, 32]"),
        ("truncated", "the body ends before its 256 binary bytes"),
        ("trailing bytes", "bytes that no input claims"),
        ("header cut", "malformed JSON"),
    ],
)
def test_bad_binary_requests(server, kind, message):
    x = np.ones((2, 32), np.float32)
    if kind == "size mismatch":
        body, h = _binary(x, size=100)
    elif kind == "truncated":
        body, h = _binary(x)
        body = body[:-10]
    elif kind == "trailing bytes":
        body, h = _binary(x, extra=b"0123")
    else:
        body, h = _binary(x, hlen_delta=-3)
    r = HTTP.post(server.url + INFER, content=body, headers=h)
    assert r.status_code == 400 and message in r.json()["error"], r.text


BAD_JSON = [
    (b"{", 400, "malformed JSON"),
    (b'"x"', 400, "the request must be"),
    (b'{"keys": ["a"], "values": [1]}', 400, "'model' must be the name"),
    (b'{"model": "ghost", "keys": ["a"], "values": [1]}', 404, "unknown model 'ghost'"),
    (b'{"model": "tth", "keys": "a", "values": [1]}', 400, "'keys' must be a list"),
    (b'{"model": "tth", "keys": ["MET_pt"], "values": []}', 400, "'values' must be a non-empty list"),
    (b'{"model": "tth", "keys": ["a", "b"], "values": [1, 2]}', 400, "keys do not match the features"),
    (b'{"model": "tth", "keys": ["MET_pt"], "values": [1]}', 400, "missing raw inputs"),
    (
        b'{"model": "tth", "version": "x", "keys": ["MET_pt"], "values": [1]}',
        400,
        "invalid model version 'x'",
    ),
    (b'{"model": "tth", "version": 9, "keys": ["MET_pt"], "values": [1]}', 404, "has no version 9"),
]


@pytest.mark.parametrize("body,status,message", BAD_JSON)
def test_bad_tfaas_json(server, body, status, message):
    r = HTTP.post(server.url + "/json", content=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_tfaas_json_wrong_row_length(server, tth_bundle):
    keys = tth_bundle.oracle.features
    r = HTTP.post(server.url + "/json", json={"model": "tth", "keys": keys, "values": [0.1] * 31})
    assert r.status_code == 400 and "must hold 32 numbers per row" in r.json()["error"]
    r = HTTP.post(server.url + "/json", json={"model": "tth", "keys": keys, "values": ["a"] * 32})
    assert r.status_code == 400 and "must be a list of numbers" in r.json()["error"]


def test_unknown_routes_methods_models_versions(server):
    r = HTTP.get(server.url + "/nope")
    assert r.status_code == 404 and r.json() == {"error": "no route '/nope'"}
    r = HTTP.get(server.url + INFER)
    assert r.status_code == 405 and "not allowed" in r.json()["error"]
    assert HTTP.get(server.url + "/v2/models/ghost").status_code == 404
    r = HTTP.get(server.url + "/v2/models/tth/versions/0")
    assert r.status_code == 400 and "invalid model version" in r.json()["error"]
    r = HTTP.post(server.url + "/v2/models/tth/versions/3/infer", json={"inputs": [_x()]})
    assert r.status_code == 404 and "has no version 3" in r.json()["error"]
    r = HTTP.post(server.url + "/v2/models/../infer", json={"inputs": [_x()]})
    assert r.status_code == 404


def test_oversized_bodies(tmp_path, tth_bundle):
    """Bodies past the limits get 413, announced (Content-Length) or streamed (chunked), raw or gzip."""
    from .conftest import install_copy

    repo = tmp_path / "repo"
    repo.mkdir()
    install_copy(repo, tth_bundle.path, "tth")
    srv = ServerProcess(repo, "--max-body-mb", "0.01", "--max-upload-mb", "0.05").start()
    try:
        big = orjson.dumps({"inputs": [_x(n=200)]})
        assert len(big) > 0.01 * 2**20
        r = HTTP.post(srv.url + INFER, content=big)
        assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]

        def chunks():
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        r = HTTP.post(srv.url + INFER, content=chunks())
        assert r.status_code == 413
        r = HTTP.post(srv.url + INFER, content=gzip.compress(big), headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and "decompressed body exceeds" in r.json()["error"]
        r = HTTP.post(srv.url + "/json", content=b" " * 20_000)
        assert r.status_code == 413
        r = HTTP.post(srv.url + "/upload", content=b"\0" * 60_000, headers=srv.admin)
        assert r.status_code == 413
        # still serving
        r = HTTP.post(srv.url + INFER, json={"inputs": [_x()]})
        assert r.status_code == 200
    finally:
        srv.stop()


# ----------------------------------------------------------------- auth
def test_auth_refusals(server, tth_bundle):
    data = pack_directory(tth_bundle.path)
    for headers, status, message in [
        ({}, 401, "needs 'Authorization: Bearer <token>'"),
        ({"Authorization": "Bearer wrong"}, 401, "invalid token"),
        ({"Authorization": "Basic dGVzdA=="}, 401, "needs 'Authorization: Bearer"),
        ({"Authorization": "Bearer " + server.token[:-1]}, 401, "invalid token"),
    ]:
        for method, path, kw in [
            ("POST", "/upload", {"content": data}),
            ("DELETE", "/delete/tth", {}),
            ("POST", "/v2/repository/models/tth/load", {}),
            ("POST", "/v2/repository/models/tth/unload", {}),
        ]:
            r = HTTP.request(method, server.url + path, headers=headers, **kw)
            assert r.status_code == status, (path, r.text)
            assert message in r.json()["error"]
            assert r.headers["www-authenticate"].startswith("Bearer")
    # nothing changed
    assert [m["name"] for m in HTTP.get(server.url + "/models").json()] == ["tth"]
    assert HTTP.get(server.url + "/v2/models/tth/ready").status_code == 200


def test_no_token_configured_refuses_changes_and_private_mode(tmp_path, tth_bundle):
    srv = ServerProcess(tmp_path / "r1", token=None).start()
    try:
        r = HTTP.post(
            srv.url + "/upload",
            content=pack_directory(tth_bundle.path),
            headers={"Authorization": "Bearer anything"},
        )
        assert r.status_code == 403 and "no token configured" in r.json()["error"]
    finally:
        srv.stop()
    # the token from the environment, and --private: reads need it too (health probes do not)
    srv = ServerProcess(
        tmp_path / "r2", "--private", token=None, env={"MLAAS4HEP_TOKEN": "env-secret"}
    ).start()
    try:
        admin = {"Authorization": "Bearer env-secret"}
        assert (
            HTTP.post(srv.url + "/upload", content=pack_directory(tth_bundle.path), headers=admin).status_code
            == 200
        )
        assert HTTP.get(srv.url + "/models").status_code == 401
        assert HTTP.get(srv.url + "/models", headers=admin).status_code == 200
        assert HTTP.post(srv.url + INFER, json={"inputs": [_x()]}).status_code == 401
        assert HTTP.post(srv.url + INFER, json={"inputs": [_x()]}, headers=admin).status_code == 200
        assert HTTP.get(srv.url + "/v2/health/ready").status_code == 200
    finally:
        srv.stop()


# ----------------------------------------------------------------- hostile archives
def _edit_meta(content: bytes, path: tuple[str, str], value) -> bytes:
    meta = orjson.loads(content)
    meta[path[0]][path[1]] = value
    return orjson.dumps(meta)


def _hostile(tth_bundle) -> dict[str, tuple[bytes, str]]:
    good = bundle_members(tth_bundle.path)
    big = io.BytesIO()
    with tarfile.open(fileobj=big, mode="w:gz") as tar:  # a "bomb": 8 MB of zeros compress to a few kB
        for name, content, _ in good:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        info = tarfile.TarInfo("notes.txt")
        info.size = 8 * 2**20
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    return {
        "absolute path": (targz(good + [("/etc/evil.json", b"{}", b"file")]), "absolute path"),
        "dot-dot": (targz(good + [("../evil.json", b"{}", b"file")]), "points outside the bundle"),
        "nested dot-dot": (
            targz(good + [("a/../../evil.json", b"{}", b"file")]),
            "points outside the bundle",
        ),
        "symlink": (targz(good + [("link.json", b"/etc/passwd", b"sym")]), "is a link"),
        "hard link": (targz(good + [("hard.json", b"model.onnx", b"hard")]), "is a link"),
        "fifo": (targz(good + [("pipe.txt", None, b"fifo")]), "is a special file"),
        "pickle": (
            targz(good + [("model.pkl", b"\x80\x04K\x01.", b"file")]),
            "has a type a bundle may not hold",
        ),
        "python code": (
            targz(good + [("model.py", b"import os", b"file")]),
            "has a type a bundle may not hold",
        ),
        "nested folder": (targz([("a/b/" + n, c, k) for n, c, k in good]), "nested folders are not allowed"),
        "two bundles": (
            targz(bundle_members(tth_bundle.path, "a/") + [("b/x.json", b"{}", b"file")]),
            "one bundle",
        ),
        "backslash": (targz(good + [("..\\evil.json", b"{}", b"file")]), "is not allowed"),
        "not a tar": (b"hello, world", "not a readable tar archive"),
        "truncated gzip": (pack_directory(tth_bundle.path)[:300], "archive"),
        "no model": (targz([(n, c, k) for n, c, k in good if n != "model.onnx"]), "has no model.onnx"),
        "bad onnx": (
            targz([(n, b"garbage" if n == "model.onnx" else c, k) for n, c, k in good]),
            "invalid bundle",
        ),
        "bad bundle.json": (
            targz([(n, b"{not json" if n == "bundle.json" else c, k) for n, c, k in good]),
            "bundle.json is not valid JSON",
        ),
        "incomplete bundle.json": (
            targz([(n, b'{"name": "x"}' if n == "bundle.json" else c, k) for n, c, k in good]),
            "bundle.json lacks",
        ),
        "bad name": (targz(good), "invalid model name"),
        "bad outputs.shape": (
            targz(
                [
                    (n, _edit_meta(c, ("outputs", "shape"), 5) if n == "bundle.json" else c, k)
                    for n, c, k in good
                ]
            ),
            "'outputs.shape' must be a list of integers",
        ),
        "bad preprocessing": (
            targz(
                [
                    (
                        n,
                        _edit_meta(c, ("inputs", "preprocessing"), {"flat": 3}) if n == "bundle.json" else c,
                        k,
                    )
                    for n, c, k in good
                ]
            ),
            "invalid bundle",
        ),
        "bomb": (big.getvalue(), "size limit"),
    }


def test_hostile_archives_unit(tth_bundle):
    cases = _hostile(tth_bundle)
    for case, (data, message) in cases.items():
        if case in (
            "no model",
            "bad onnx",
            "bad bundle.json",
            "incomplete bundle.json",
            "bad name",
            "bad outputs.shape",
            "bad preprocessing",
        ):
            continue  # these pass the archive checks; the repository refuses them (below)
        with pytest.raises(BundleError, match=None) as info:
            read_archive(data, max_total=4 * 2**20)
        assert message in str(info.value), (case, str(info.value))


def test_hostile_archives_over_http(tmp_path, tth_bundle):
    repo = tmp_path / "repo"
    srv = ServerProcess(repo, "--max-upload-mb", "4").start()
    try:
        for case, (data, message) in _hostile(tth_bundle).items():
            url = srv.url + "/upload" + ("?name=../../etc" if case == "bad name" else "")
            r = HTTP.post(url, content=data, headers=srv.admin)
            assert r.status_code == 400, (case, r.text)
            assert message in r.json()["error"], (case, r.json())
        # only the store's own files: its lock, its generation, an empty staging folder
        assert sorted(p.name for p in repo.iterdir()) == [".generation", ".lock", ".staging"]
        assert not list((repo / ".staging").iterdir())
        assert not (tmp_path / "evil.json").exists()
        assert srv.alive()
        r = HTTP.post(srv.url + "/upload", files={"bundle": ("x.tgz", b"junk")}, headers=srv.admin)
        assert r.status_code == 400
        r = HTTP.post(srv.url + "/upload", files={"other": ("x.tgz", b"junk")}, headers=srv.admin)
        assert r.status_code == 400 and "needs a file field 'bundle'" in r.json()["error"]
        r = HTTP.post(
            srv.url + "/upload",
            content=b"--xx\r\nbroken",
            headers={**srv.admin, "Content-Type": "multipart/form-data; boundary=xx"},
        )
        assert r.status_code == 400
    finally:
        srv.stop()
