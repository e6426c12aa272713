"""The wire gRPC front end (``serve/grpcwire.py``) against grpcio's, with real grpc.aio clients, in process.

Both front ends serve one app; every reply of the wire front end must be the
same bytes as grpcio's (and its scores the oracle's), every error the same
status code and message.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import numpy as np
import pytest

from .conftest import install_copy
from .oracle import ATOL

grpc = pytest.importorskip("grpc")
pytest.importorskip("hpack")
from mlaas4hep.serve import create_app  # noqa: E402
from mlaas4hep.serve._proto import grpc_service_pb2 as pb  # noqa: E402
from mlaas4hep.serve._proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from mlaas4hep.serve.grpc_server import GrpcServer  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
def app(tth_bundle, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    install_copy(repo, tth_bundle.path, "tth")
    return create_app(repo, max_body_mb=1.0)


def _raw(x: np.ndarray, model: str = "tth") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id="r1")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return req


def _typed(x: np.ndarray) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="tth")
    t = req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(np.asarray(x, dtype=np.float32).ravel().tolist())
    return req


async def _both(app, body):
    """``await body(port)`` against the wire front end and against grpcio: (wire's, grpcio's)."""
    out = []
    for frontend in ("wire", "grpcio"):
        srv = GrpcServer(app.state, 0, frontend=frontend, listeners=1)
        await srv.start()
        try:
            out.append(await body(srv.port))
        finally:
            await srv.stop(0)
    return out


async def _call(port: int, method: str, request: bytes, **kw) -> tuple[str, bytes | str]:
    """("OK", reply bytes) or (status code name, details) of one unary call carrying raw bytes."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", **kw) as ch:
        try:
            return "OK", await ch.unary_unary(method)(request, timeout=30)
        except grpc.aio.AioRpcError as err:
            return err.code().name, err.details() or ""


def test_replies_are_grpcio_s_bytes(app, tth_bundle):
    x = np.ascontiguousarray(tth_bundle.x[:300], dtype=np.float32)  # ~40 kB in, several DATA frames
    F = x.shape[1]
    cases = {
        "one raw row": _raw(x[:1]).SerializeToString(),
        "300 raw rows": _raw(x).SerializeToString(),
        "typed contents": _typed(x[:5]).SerializeToString(),
        "unknown model": _raw(x[:1], "nope").SerializeToString(),
        "wrong width": _raw(np.zeros((2, F + 1), np.float32)).SerializeToString(),
        "not a message": b"\xff\xff\xff",
    }

    async def body(port: int) -> dict:
        out = {k: await _call(port, INFER, v) for k, v in cases.items()}
        meta = pb.ModelMetadataRequest(name="tth").SerializeToString()
        out["metadata"] = await _call(port, "/inference.GRPCInferenceService/ModelMetadata", meta)
        out["live"] = await _call(port, "/inference.GRPCInferenceService/ServerLive", b"")
        return out

    wire, grpcio = asyncio.run(_both(app, body))
    for k in ("one raw row", "300 raw rows", "typed contents", "metadata", "live"):
        assert wire[k][0] == "OK" and wire[k] == grpcio[k], k
    for k in ("unknown model", "wrong width"):
        assert wire[k][0] in ("NOT_FOUND", "INVALID_ARGUMENT") and wire[k] == grpcio[k], k
    # grpcio answers UNKNOWN (and logs a traceback); the wire front end names the problem
    assert grpcio["not a message"][0] == "UNKNOWN"
    assert wire["not a message"] == (
        "INVALID_ARGUMENT",
        "the request is not a valid inference.ModelInferRequest",
    )
    assert wire["unknown model"][1] == grpcio["unknown model"][1] != ""
    r = pb.ModelInferResponse.FromString(wire["300 raw rows"][1])
    assert r.id == "r1" and r.model_name == "tth"
    y = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(300, -1)
    np.testing.assert_allclose(y, tth_bundle.oracle.score(x), atol=ATOL)


def test_many_concurrent_calls_on_one_connection(app, tth_bundle):
    x = np.ascontiguousarray(tth_bundle.x[:64], dtype=np.float32)

    async def main() -> list[np.ndarray]:
        srv = GrpcServer(app.state, 0, frontend="wire")
        await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                replies = await asyncio.gather(
                    *(stub.ModelInfer(_raw(x[i : i + 1]), timeout=30) for i in range(64))
                )
        finally:
            await srv.stop(0)
        return [np.frombuffer(r.raw_output_contents[0], np.float32) for r in replies]

    ys = asyncio.run(main())  # each reply on its own stream carries its own row's score
    np.testing.assert_allclose(np.stack(ys), tth_bundle.oracle.score(x), atol=ATOL)


def test_a_widened_connection_serves_more_calls_than_its_limit(app, tth_bundle):
    """After its first long message, the connection runs 16 calls of up to 512 KiB at once
    (``SETTINGS``); grpcio queues the other 24 of 40 concurrent calls of 300 kB, and every one
    gets its own scores."""
    width = tth_bundle.x.shape[1]
    rows = 300_000 // (4 * width)
    x = np.ascontiguousarray(np.resize(tth_bundle.x, (40 * rows, width)), dtype=np.float32)

    async def main() -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        srv = GrpcServer(app.state, 0, frontend="wire")
        await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                first = await stub.ModelInfer(_raw(x[:rows]), timeout=30)
                widened = [(c.credit.first, c.credit.max_streams) for c in srv.wire.conns]
                replies = await asyncio.gather(
                    *(stub.ModelInfer(_raw(x[i * rows : (i + 1) * rows]), timeout=30) for i in range(40))
                )
        finally:
            await srv.stop(0)
        return [np.frombuffer(r.raw_output_contents[0], np.float32) for r in (first, *replies)], widened

    ys, widened = asyncio.run(main())
    assert widened == [(8 * 65535, 16)]
    np.testing.assert_allclose(ys[0], tth_bundle.oracle.score(x[:rows]).ravel(), atol=ATOL)
    np.testing.assert_allclose(np.concatenate(ys[1:]), tth_bundle.oracle.score(x).ravel(), atol=ATOL)


def test_limits_and_unserved_calls(app, tth_bundle):
    big = _raw(np.zeros((12_000, tth_bundle.x.shape[1]), np.float32)).SerializeToString()  # over 1 MB
    assert len(big) > 2**20

    async def body(port: int) -> dict:
        return {
            "too large": await _call(port, INFER, big),
            "no such method": await _call(port, "/inference.GRPCInferenceService/Nope", b""),
            "streaming": await _call(port, "/inference.GRPCInferenceService/ModelStreamInfer", b""),
            "not overridden": await _call(port, "/inference.GRPCInferenceService/TraceSetting", b""),
        }

    wire, grpcio = asyncio.run(_both(app, body))
    assert wire["too large"][0] == grpcio["too large"][0] == "RESOURCE_EXHAUSTED"
    assert wire["too large"][1].startswith("Received message larger than max (")
    for k in ("no such method", "streaming", "not overridden"):
        assert wire[k][0] == grpcio[k][0] == "UNIMPLEMENTED", k


def test_compressed_requests(app, tth_bundle):
    x = np.ascontiguousarray(tth_bundle.x[:300], dtype=np.float32)
    req = _raw(x).SerializeToString()

    async def body(port: int) -> list:
        return [
            await _call(port, INFER, req, compression=c)
            for c in (grpc.Compression.Gzip, grpc.Compression.Deflate)
        ]

    wire, grpcio = asyncio.run(_both(app, body))
    assert wire == grpcio and all(code == "OK" for code, _ in wire)
    y = np.frombuffer(pb.ModelInferResponse.FromString(wire[0][1]).raw_output_contents[0], np.float32)
    np.testing.assert_allclose(y.reshape(300, -1), tth_bundle.oracle.score(x), atol=ATOL)


def test_reply_larger_than_the_client_s_window(app, tth_bundle):
    """A client that lets the server send 1 kB at a time still gets every score (flow control)."""
    x = np.ascontiguousarray(np.resize(tth_bundle.x, (2000, tth_bundle.x.shape[1])), dtype=np.float32)
    req = _raw(x)  # the reply: 2000 x K floats, many windows of 1 kB

    async def main():
        srv = GrpcServer(app.state, 0, frontend="wire")
        await srv.start()
        opts = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}", options=opts) as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                return await asyncio.gather(*(stub.ModelInfer(req, timeout=30) for _ in range(3)))
        finally:
            await srv.stop(0)

    for r in asyncio.run(main()):
        y = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(2000, -1)
        np.testing.assert_allclose(y, tth_bundle.oracle.score(x), atol=ATOL)


def test_not_http2_gets_goaway_and_close(app):
    async def main() -> bytes:
        srv = GrpcServer(app.state, 0, frontend="wire")
        await srv.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await asyncio.wait_for(r.read(), 10)  # until the server closes
            w.close()
            return data
        finally:
            await srv.stop(0)

    data = asyncio.run(main())
    frames = []
    while len(data) >= 9:
        n = int.from_bytes(data[:3], "big")
        frames.append((data[3], data[9 : 9 + n]))
        data = data[9 + n :]
    assert [k for k, _ in frames] == [4, 8, 7]  # our SETTINGS, WINDOW_UPDATE, then GOAWAY
    assert struct.unpack(">II", frames[-1][1][:8]) == (0, 1)  # last stream 0, PROTOCOL_ERROR


def test_stop_closes_idle_connections(app):
    async def main() -> bytes:
        srv = GrpcServer(app.state, 0, frontend="wire")
        await srv.start()
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)[:3] + b"\x04\x00" + bytes(4))  # SETTINGS
        await asyncio.sleep(0.2)
        await srv.stop(0)
        s.settimeout(5)
        data = b""
        while chunk := await asyncio.to_thread(s.recv, 65536):
            data += chunk
        s.close()
        return data

    kinds = []
    data = asyncio.run(main())
    while len(data) >= 9:
        kinds.append(data[3])
        data = data[9 + int.from_bytes(data[:3], "big") :]
    assert kinds == [4, 8, 4, 7]  # SETTINGS, WINDOW_UPDATE, the ACK of the client's SETTINGS, GOAWAY


def test_stop_says_goaway_first_and_finishes_calls_in_flight(app, tth_bundle):
    """Stopping (SIGTERM's drain): GOAWAY at once; a call already open still gets its scores,
    a call opened after the GOAWAY is refused (REFUSED_STREAM: the client may send it elsewhere)."""
    import hpack

    x = np.ascontiguousarray(tth_bundle.x[:2], dtype=np.float32)
    msg = _raw(x).SerializeToString()
    body = b"\x00" + len(msg).to_bytes(4, "big") + msg
    enc = hpack.Encoder()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", INFER), (":authority", "x")]

    def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
        return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + struct.pack(">I", sid) + payload

    async def main() -> list[tuple[int, int, int, bytes]]:
        srv = GrpcServer(app.state, 0, frontend="wire")
        await srv.start()
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
        w.write(frame(1, 0x4, 1, enc.encode(headers)) + frame(0, 0, 1, body[:10]))  # stream 1: half sent
        await w.drain()
        await asyncio.sleep(0.2)
        stopping = asyncio.create_task(srv.stop(5))
        frames, data = [], b""
        while not any(k == 7 for k, *_ in frames):  # until the GOAWAY
            data += await asyncio.wait_for(r.read(65536), 10)
            while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
                n = int.from_bytes(data[:3], "big")
                frames.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9 : 9 + n]))
                data = data[9 + n :]
        w.write(frame(0, 0x1, 1, body[10:]) + frame(1, 0x5, 3, enc.encode(headers)))  # the rest; a new call
        await w.drain()
        data += await asyncio.wait_for(r.read(), 10)  # until the server closes
        await stopping
        while len(data) >= 9:
            n = int.from_bytes(data[:3], "big")
            frames.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9 : 9 + n]))
            data = data[9 + n :]
        w.close()
        return frames

    frames = asyncio.run(main())
    goaway = next(f for f in frames if f[0] == 7)
    assert struct.unpack(">II", goaway[3][:8]) == (1, 0)  # last stream 1, NO_ERROR
    assert [(k, sid) for k, _, sid, _ in frames if sid == 3] == [(3, 3)]  # RST_STREAM
    assert struct.unpack(">I", next(p for k, _, sid, p in frames if sid == 3)) == (7,)  # REFUSED_STREAM
    reply = b"".join(p for k, _, sid, p in frames if k == 0 and sid == 1)
    r = pb.ModelInferResponse.FromString(reply[5:])
    y = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(2, -1)
    np.testing.assert_allclose(y, tth_bundle.oracle.score(x), atol=ATOL)
