"""``/openapi.json`` describes every route, and fuzzing the server from it gets no 5xx (issue 10,
problem 3)."""

from __future__ import annotations

import re

from starlette.routing import Route

from mlaas4hep.serve import create_app

from .conftest import HTTP, ServerProcess, install_copy
from .fuzzing import fuzz

#: Generated requests per operation (at most; hypothesis drops duplicates): ~30 operations, < 60 s.
EXAMPLES = 12


def test_openapi_lists_every_route(tmp_path):
    srv = ServerProcess(tmp_path / "srv").start()
    try:
        r = HTTP.get(srv.url + "/openapi.json")
    finally:
        srv.stop()
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    app = create_app(tmp_path / "repo").app
    routes = {
        (re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", rt.path), m.lower())
        for rt in app.routes
        if isinstance(rt, Route) and rt.path != "/"
        for m in rt.methods
        if m not in ("HEAD", "OPTIONS")
    }
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    # /delete/{model} also answers POST (old TFaaS clients); the document gives the DELETE form
    assert routes - documented == {("/delete/{model}", "post")}
    assert documented <= routes
    for (path, method), op in ((k, doc["paths"][k[0]][k[1]]) for k in documented):
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert params == set(re.findall(r"\{(\w+)\}", path)), (path, method)
        errors = [c for c in op["responses"] if c.startswith("4")]
        for c in errors:
            assert op["responses"][c]["content"]["application/json"]["schema"]["required"] == ["error"]


def test_fuzzing_gets_no_5xx(tmp_path, tth_bundle):
    """schemathesis, positive and negative cases for every operation: never a 5xx, and the
    server still serves afterwards."""
    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    srv = ServerProcess(repo, "--data-dir", str(tth_bundle.data_dir)).start()
    try:
        result = fuzz(srv.url, srv.token, "tth", examples=EXAMPLES)
        assert result.requests > 150
        assert result.five_xx == 0, result.server_errors[:10]
        assert sum(n for s, n in result.statuses.items() if 400 <= s < 500) > 0
        HTTP.post(srv.url + "/v2/repository/models/tth/load", headers=srv.admin).raise_for_status()
        assert HTTP.get(srv.url + "/v2/models/tth/ready").status_code == 200
    finally:
        srv.stop()
    assert "Traceback" not in srv.log.read_text()
