"""64 concurrent clients get their own, correct answers, and the batcher merges their requests.

The clients are aiohttp sessions (httpx's async pool slows to about 100 requests/s
with 64 connections, which would make this test measure httpx).
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import numpy as np
import orjson

from .conftest import HTTP
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
