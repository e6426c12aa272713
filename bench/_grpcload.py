"""A gRPC load generator for Triton's ``ModelInfer``: ``python bench/_grpcload.py ADDR BODY CLIENTS SECONDS``.

``BODY`` is a serialized ``inference.ModelInferRequest``; it is sent as bytes
(no per-call protobuf work in the client) by ``CLIENTS`` concurrent callers on
one ``grpc.aio`` channel (HTTP/2 streams, as gRPC clients do), for ``SECONDS``.
Prints ``{"req_per_s", "p50_ms", "p99_ms", "errors"}`` as JSON. Run it in its
own process so that it does not share an event loop (or a GIL) with the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(n_features: int, rows: int = 1, seed: int = 2) -> bytes:
    """A serialized ModelInferRequest of ``rows`` FP32 rows for model ``mlp``, as raw_input_contents."""
    from mlaas4hep.serve._proto import grpc_service_pb2 as pb

    x = np.random.default_rng(seed).random((rows, n_features), dtype=np.float32)
    req = pb.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return req.SerializeToString()


async def _run(addr: str, body: bytes, clients: int, seconds: float) -> dict:
    import grpc

    lat: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(addr) as channel:
        call = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
        await call(body)  # connect, warm up

        async def worker(stop: float) -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await call(body)
                except grpc.aio.AioRpcError:
                    errors += 1
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(t0 + seconds) for _ in range(clients)))
        dt = time.perf_counter() - t0
    a = np.array(lat) * 1e3
    return {
        "req_per_s": len(a) / dt,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "errors": errors,
    }


if __name__ == "__main__":
    addr, body_file, clients, seconds = sys.argv[1:5]
    coro = _run(addr, Path(body_file).read_bytes(), int(clients), float(seconds))
    try:
        import uvloop

        if os.environ.get("GRPCLOAD_LOOP") == "asyncio":
            raise ImportError
    except ImportError:
        print(json.dumps(asyncio.run(coro)))
    else:
        print(json.dumps(uvloop.run(coro)))
