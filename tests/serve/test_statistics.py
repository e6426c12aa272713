"""Triton's model statistics over HTTP and gRPC, read with Triton's own clients (as perf_analyzer does).

After a known number of requests (two of 3 rows and one of 1 row that succeed,
one that is refused), both protocols report the same counts: rows inferred,
onnxruntime calls, successes and failures with their time, queue and compute
time per request; every model when no name is given; NOT_FOUND / 404 for a model the
repository does not hold.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import HTTP, repo_of
from .grpc_helpers import GrpcServerProcess


@pytest.fixture(scope="module")
def ssrv(tth_bundle, tmp_path_factory):
    srv = GrpcServerProcess(
        repo_of(tmp_path_factory, "stats", tth=tth_bundle.path, idle=tth_bundle.path)
    ).start()
    yield srv
    srv.stop()


def _infer(client, mod, x: np.ndarray) -> None:
    inp = mod.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("tth", [inp])


def test_statistics_count_what_the_server_did(ssrv, tth_bundle):
    x = tth_bundle.x[:3].astype(np.float32)
    with httpclient.InferenceServerClient(ssrv.url.removeprefix("http://")) as h:
        _infer(h, httpclient, x)
    g = grpcclient.InferenceServerClient(ssrv.grpc_url)
    try:
        _infer(g, grpcclient, x)
        _infer(g, grpcclient, x[:1])
        with pytest.raises(InferenceServerException):  # a wrong feature count: refused, counted as failed
            _infer(g, grpcclient, x[:, :5])

        over_grpc = g.get_inference_statistics("tth", as_json=True)["model_stats"]
    finally:
        g.close()
    with httpclient.InferenceServerClient(ssrv.url.removeprefix("http://")) as h:
        over_http = h.get_inference_statistics("tth")["model_stats"]

    for stats in (over_grpc, over_http):
        (s,) = stats
        assert s["name"] == "tth" and s["version"] == "1"
        assert int(s["inference_count"]) == 7  # rows
        assert 1 <= int(s["execution_count"]) <= 3  # onnxruntime calls (requests may share one)
        inf = s["inference_stats"]
        assert int(inf["success"]["count"]) == 3 and int(inf["success"]["ns"]) > 0
        assert int(inf["fail"]["count"]) == 1
        # per request that reached onnxruntime (the refused one did not), as Triton counts them
        for part in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert int(inf[part]["count"]) == 3, part
        assert int(inf["compute_infer"]["ns"]) > 0
        assert int(s["last_inference"]) > 1_700_000_000_000  # ms since the epoch
    # the JSON of the HTTP route carries plain integers
    assert isinstance(over_http[0]["inference_count"], int)


def test_statistics_of_every_model_and_of_an_unknown_one(ssrv):
    r = HTTP.get(f"{ssrv.url}/v2/models/stats")
    assert r.status_code == 200
    by_name = {s["name"]: s for s in r.json()["model_stats"]}
    assert set(by_name) == {"tth", "idle"}
    assert by_name["idle"]["inference_count"] == 0 and by_name["idle"]["last_inference"] == 0
    assert HTTP.get(f"{ssrv.url}/v2/models/tth/versions/1/stats").status_code == 200
    assert HTTP.get(f"{ssrv.url}/v2/models/nope/stats").status_code == 404
    assert HTTP.get(f"{ssrv.url}/v2/models/tth/versions/9/stats").status_code == 404

    g = grpcclient.InferenceServerClient(ssrv.grpc_url)
    try:
        names = {s["name"] for s in g.get_inference_statistics(as_json=True)["model_stats"]}
        assert names == {"tth", "idle"}
        with pytest.raises(InferenceServerException) as err:
            g.get_inference_statistics("nope")
        assert "NOT_FOUND" in str(err.value.status())
    finally:
        g.close()
