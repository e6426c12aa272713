"""64 concurrent clients get their own, correct answers, and the batcher merges their requests;
1000-row requests computed two at a time get the oracle's scores bit for bit.

The clients are aiohttp sessions (httpx's async pool slows to about 100 requests/s
with 64 connections, which would make this test measure httpx).
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import numpy as np
import orjson

from .conftest import HTTP, ServerProcess, repo_of
from .oracle import ATOL

PER_CLIENT = 16


def _batch_stats(url: str) -> tuple[float, float]:
    text = HTTP.get(url + "/metrics").text
    count = re.search(r'mlaas4hep_batch_size_rows_count\{model="tth"\} (\S+)', text)
    rows = re.search(r'mlaas4hep_batch_size_rows_sum\{model="tth"\} (\S+)', text)
    return (float(count.group(1)), float(rows.group(1))) if count else (0.0, 0.0)


def test_64_concurrent_clients(server, tth_bundle):
    x = tth_bundle.x[: 64 * PER_CLIENT]
    expected = tth_bundle.oracle.score(x)
    keys = tth_bundle.oracle.features
    count0, rows0 = _batch_stats(server.url)

    async def client(i: int, http: aiohttp.ClientSession) -> list[tuple[int, np.float32]]:
        out = []
        for j in range(PER_CLIENT):
            k = i * PER_CLIENT + j
            if j % 2:  # alternate the OIP JSON route and the TFaaS route
                body = {
                    "id": str(k),
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32], "data": x[k].tolist()}],
                }
                async with http.post("/v2/models/tth/infer", data=orjson.dumps(body)) as r:
                    assert r.status == 200, await r.text()
                    res = orjson.loads(await r.read())
                assert res["id"] == str(k)
                out.append((k, np.float32(res["outputs"][0]["data"][0])))
            else:
                body = {"model": "tth", "keys": keys, "values": x[k].tolist()}
                async with http.post("/json", data=orjson.dumps(body)) as r:
                    assert r.status == 200, await r.text()
                    out.append((k, np.float32(orjson.loads(await r.read())[1])))
        return out

    async def main():
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(server.url, connector=connector) as http:
            return await asyncio.gather(*(client(i, http) for i in range(64)))

    results = [item for part in asyncio.run(main()) for item in part]
    assert len(results) == 64 * PER_CLIENT
    got = np.empty(len(x), np.float32)
    for k, p in results:
        got[k] = p
    np.testing.assert_allclose(got, expected[:, 0], rtol=0, atol=ATOL)
    count1, rows1 = _batch_stats(server.url)
    assert rows1 - rows0 == 64 * PER_CLIENT
    assert count1 - count0 < 64 * PER_CLIENT, "concurrent requests were never merged into one batch"


def test_1000_row_requests_two_calls_at_once_score_as_the_oracle(tth_bundle, tmp_path_factory):
    """4 clients send 1000-row requests to a server batching up to 1024 rows: each batch is one
    request (two do not fit), and a full batch starts while another computes (two onnxruntime
    calls at once, --infer-threads 2). Every request gets its own rows, with the very bits that
    onnxruntime gives the oracle on the same 1000 rows."""
    clients, per_client, n = 4, 3, 1000
    x = tth_bundle.x[: clients * per_client * n]
    expected = [tth_bundle.oracle.score(x[k * n : (k + 1) * n])[:, 0] for k in range(clients * per_client)]
    srv = ServerProcess(
        repo_of(tmp_path_factory, "calls", tth=tth_bundle.path),
        *("--max-batch", "1024", "--max-delay-ms", "2", "--infer-threads", "2"),
        token=None,
    ).start()

    async def client(i: int, http: aiohttp.ClientSession) -> list[tuple[int, np.ndarray]]:
        out = []
        for j in range(per_client):
            k = i * per_client + j
            rows = x[k * n : (k + 1) * n]
            body = {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": list(rows.shape),
                        "data": rows.ravel().tolist(),
                    }
                ]
            }
            async with http.post("/v2/models/tth/infer", data=orjson.dumps(body)) as r:
                assert r.status == 200, await r.text()
                res = orjson.loads(await r.read())
            out.append((k, np.asarray(res["outputs"][0]["data"], np.float32)))
        return out

    async def main():
        async with aiohttp.ClientSession(srv.url, connector=aiohttp.TCPConnector(limit=clients)) as http:
            return await asyncio.gather(*(client(i, http) for i in range(clients)))

    try:
        count0, rows0 = _batch_stats(srv.url)
        results = [item for part in asyncio.run(main()) for item in part]
        count1, rows1 = _batch_stats(srv.url)
    finally:
        srv.stop()
    assert sorted(k for k, _ in results) == list(range(clients * per_client))
    for k, got in results:
        np.testing.assert_array_equal(
            got.view(np.uint32), expected[k].view(np.uint32), err_msg=f"request {k}"
        )
    assert (count1 - count0, rows1 - rows0) == (clients * per_client, clients * per_client * n)
