"""The HTTP/1.1 front end (serve/httpfront.py) on the wire: raw sockets and tritonclient against a real server.

The inference routes are answered by the protocol itself, everything else by
the ASGI app; these tests drive what the protocol then handles on its own
(pipelining across both kinds, chunked bodies, ``Expect: 100-continue``, the
body limit, clients that leave mid-body, HTTP/1.0 and ``Connection: close``),
with scores checked against onnxruntime (:mod:`.oracle`).
"""

from __future__ import annotations

import re
import socket
import time

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from .conftest import HTTP, ServerProcess, install_copy, repo_of
from .oracle import ATOL

INFER = "/v2/models/tth/infer"


class Conn:
    """One raw HTTP/1.1 connection: send bytes, read whole responses."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of the next response."""
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed before a response: {self.buf!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            assert self._fill(), "connection closed mid-body"
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed(self) -> bool:
        """Whether the server closed the connection (nothing more comes)."""
        return not self.buf and not self._fill()

    def close(self) -> None:
        self.sock.close()


def post(path: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    head = [f"POST {path} HTTP/{version}", "Host: test", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def json_infer(x: np.ndarray) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    )


def binary_infer(x: np.ndarray) -> tuple[bytes, int]:
    """A binary-tensor request as tritonclient sends it: JSON header, then the raw rows; and its header length."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "probs", "parameters": {"binary_data": True}}],
        }
    )
    return header + x.tobytes(), len(header)


def json_scores(body: bytes) -> np.ndarray:
    out = orjson.loads(body)["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def binary_scores(headers: dict[str, str], body: bytes) -> np.ndarray:
    hlen = int(headers["inference-header-content-length"])
    out = orjson.loads(body[:hlen])["outputs"][0]
    return np.frombuffer(body[hlen:], dtype=np.float32).reshape(out["shape"])


def http_count(url: str, route: str, status: int) -> int:
    text = HTTP.get(url + "/metrics").text
    m = re.search(
        rf'mlaas4hep_http_requests_total\{{method="POST",route="{re.escape(route)}",status="{status}"\}} (\S+)',
        text,
    )
    return int(float(m.group(1))) if m else 0


# ----------------------------------------------------------------- on the shared server
def test_pipelined_requests_are_answered_in_order(server, tth_bundle):
    """Hot and ASGI routes sent back to back in one write come back in the order they were sent."""
    a, b = tth_bundle.x[:3], tth_bundle.x[3:10]
    bin_body, hlen = binary_infer(b)
    tfaas = orjson.dumps({"keys": tth_bundle.oracle.features, "values": a[0].tolist(), "model": "tth"})
    c = Conn(server.url)
    try:
        c.send(
            post(INFER, json_infer(a))
            + get("/v2/health/live")
            + post("/json", tfaas)
            + post(INFER, bin_body, f"Inference-Header-Content-Length: {hlen}")
            + get("/v2/models/tth")
            + post("/v2/models/ghost/infer", json_infer(a))
            + post("/v2/models/tth/versions/1/infer", json_infer(b))
        )
        status, _, body = c.response()
        assert status == 200
        np.testing.assert_allclose(json_scores(body), tth_bundle.oracle.score(a), rtol=0, atol=ATOL)
        assert c.response()[::2] == (200, b'{"live":true}')
        status, _, body = c.response()
        p = tth_bundle.oracle.score(a[:1])[0, 0]
        assert status == 200
        np.testing.assert_allclose(orjson.loads(body), [1 - p, p], rtol=0, atol=ATOL)
        status, headers, body = c.response()
        assert status == 200 and headers["content-type"] == "application/octet-stream"
        np.testing.assert_allclose(
            binary_scores(headers, body), tth_bundle.oracle.score(b), rtol=0, atol=ATOL
        )
        status, _, body = c.response()
        assert status == 200 and orjson.loads(body)["name"] == "tth"
        assert c.response()[::2] == (404, b'{"error":"unknown model \'ghost\'"}')
        status, _, body = c.response()
        assert status == 200
        np.testing.assert_allclose(json_scores(body), tth_bundle.oracle.score(b), rtol=0, atol=ATOL)
    finally:
        c.close()


def test_keep_alive_across_hot_and_asgi_routes(server, tth_bundle):
    """One connection, one request at a time, alternating between the two paths: it stays open."""
    c = Conn(server.url)
    try:
        for i in range(3):
            x = tth_bundle.x[i * 5 : i * 5 + 5]
            c.send(post(INFER, json_infer(x)))
            status, headers, body = c.response()
            assert status == 200 and "connection" not in headers
            np.testing.assert_allclose(json_scores(body), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
            c.send(get("/v2/health/ready"))
            assert c.response()[::2] == (200, b'{"ready":true}')
    finally:
        c.close()


def test_malformed_request_after_a_good_one_gets_400_and_a_closed_connection(server, tth_bundle):
    """The protocol's read path: a served request, then bytes that are not HTTP on the same
    connection, answered 400 as uvicorn does, and the connection closed."""
    c = Conn(server.url)
    try:
        x = tth_bundle.x[:2]
        c.send(post(INFER, json_infer(x)))
        status, _, body = c.response()
        assert status == 200
        np.testing.assert_allclose(json_scores(body), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
        c.send(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = c.response()
        assert (status, body) == (400, b"Invalid HTTP request received.")
        assert c.closed()
    finally:
        c.close()


def test_an_upgrade_the_server_does_not_speak_is_served_as_plain_http(server):
    """A WebSocket upgrade to a server without WebSockets: answered as an ordinary request."""
    c = Conn(server.url)
    try:
        c.send(
            b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        assert c.response()[::2] == (200, b'{"live":true}')
    finally:
        c.close()


def test_chunked_body_in_pieces(server, tth_bundle):
    """A chunked request body, sent in small pieces with pauses, is gathered before decoding."""
    x = tth_bundle.x[:40]
    body = json_infer(x)
    c = Conn(server.url)
    try:
        c.send(f"POST {INFER} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for i in range(0, len(body), 700):
            piece = body[i : i + 700]
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.01)
        c.send(b"0\r\n\r\n")
        status, _, got = c.response()
        assert status == 200
        np.testing.assert_allclose(json_scores(got), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
    finally:
        c.close()


def test_expect_100_continue(server, tth_bundle):
    """``Expect: 100-continue`` gets ``100 Continue`` once the model is known, then the answer;
    for an unknown model the error comes at once, without the body."""
    x = tth_bundle.x[:8]
    body, hlen = binary_infer(x)
    c = Conn(server.url)
    try:
        head = post(INFER, body, f"Inference-Header-Content-Length: {hlen}", "Expect: 100-continue")
        c.send(head[: -len(body)])
        while b"\r\n\r\n" not in c.buf:
            assert c._fill()
        assert c.buf == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.buf = b""
        c.send(body)
        status, headers, got = c.response()
        assert status == 200
        np.testing.assert_allclose(binary_scores(headers, got), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
    finally:
        c.close()
    c = Conn(server.url)
    try:
        c.send(post("/v2/models/ghost/infer", body, "Expect: 100-continue")[: -len(body)])
        assert c.response()[::2] == (404, b'{"error":"unknown model \'ghost\'"}')
    finally:
        c.close()


@pytest.mark.parametrize("version, extra", [("1.0", ()), ("1.1", ("Connection: close",))])
def test_http10_and_connection_close(server, tth_bundle, version, extra):
    """HTTP/1.0 and ``Connection: close``: one answer, marked ``connection: close``, then the server closes."""
    x = tth_bundle.x[:2]
    c = Conn(server.url)
    try:
        c.send(post(INFER, json_infer(x), *extra, version=version))
        status, headers, body = c.response()
        assert status == 200 and headers["connection"] == "close"
        np.testing.assert_allclose(json_scores(body), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
        assert c.closed()
    finally:
        c.close()


def test_tritonclient_many_requests_on_few_connections(server, tth_bundle):
    """40 concurrent requests of different sizes over 4 connections: each gets its own rows' scores."""
    tc = triton.InferenceServerClient(server.url.removeprefix("http://"), concurrency=4)
    try:
        pending = []
        for i in range(40):
            x = tth_bundle.x[i * 7 : i * 7 + 1 + i % 7]
            inp = triton.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=i % 2 == 0)
            out = triton.InferRequestedOutput("probs", binary_data=i % 3 == 0)
            pending.append((x, tc.async_infer("tth", [inp], outputs=[out], request_id=f"r{i}")))
        for i, (x, req) in enumerate(pending):
            res = req.get_result()
            assert res.get_response()["id"] == f"r{i}"
            np.testing.assert_allclose(res.as_numpy("probs"), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
    finally:
        tc.close()


# ----------------------------------------------------------------- limits and departures
@pytest.fixture(scope="module")
def small(tth_bundle, tmp_path_factory):
    """A server whose request bodies may hold 10 kB at most."""
    repo = repo_of(tmp_path_factory, "httpfront", tth=tth_bundle.path)
    srv = ServerProcess(repo, "--max-body-mb", "0.01").start()
    yield srv
    srv.stop()


def test_oversize_bodies(small, tth_bundle):
    """Past the body limit: 413 with the limit's message, announced or while a chunked body streams;
    the server reads no further and goes on serving."""
    limit = int(0.01 * 2**20)
    c = Conn(small.url)
    try:  # announced: refused before any of the body is sent
        c.send(f"POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Length: {limit + 1}\r\n\r\n".encode())
        error = f"the request body of {limit + 1} bytes exceeds the limit of {limit} bytes"
        assert c.response()[::2] == (413, orjson.dumps({"error": error}))
    finally:
        c.close()
    c = Conn(small.url)
    try:  # streamed: the answer comes while the client is still sending
        c.send(f"POST {INFER} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        piece = b"[" * 4000
        for _ in range(3):
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        error = f"the request body exceeds the limit of {limit} bytes"
        assert c.response()[::2] == (413, orjson.dumps({"error": error}))
    finally:
        c.close()
    x = tth_bundle.x[:4]
    r = HTTP.post(small.url + INFER, content=json_infer(x))
    assert r.status_code == 200
    np.testing.assert_allclose(json_scores(r.content), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)


def test_client_gone_mid_body_counts_499(small, tth_bundle):
    """A client that leaves before its body is complete: counted as 499, no traceback, nothing answered."""
    before = http_count(small.url, "/v2/models/{name}/infer", 499)
    before_json = http_count(small.url, "/json", 499)
    for path in (INFER, "/json"):
        c = Conn(small.url)
        c.send(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\n".encode() + b"{" * 100)
        time.sleep(0.2)
        c.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if http_count(small.url, "/v2/models/{name}/infer", 499) == before + 1:
            break
        time.sleep(0.05)
    assert http_count(small.url, "/v2/models/{name}/infer", 499) == before + 1
    assert http_count(small.url, "/json", 499) == before_json + 1
    assert "Traceback" not in small.log.read_text()
    x = tth_bundle.x[:4]  # and it goes on serving
    r = HTTP.post(small.url + INFER, content=json_infer(x))
    np.testing.assert_allclose(json_scores(r.content), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)


# ----------------------------------------------------------------- in process: what bypasses ASGI
def test_inference_routes_bypass_asgi(tmp_path, tth_bundle):
    """The protocol answers the inference routes itself: the ASGI app (behind a recording wrapper,
    as uvicorn's middleware wraps it) sees only the other requests, and both kinds are answered."""
    import asyncio

    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from mlaas4hep.serve import create_app
    from mlaas4hep.serve.config import ServeConfig
    from mlaas4hep.serve.httpfront import FrontProtocol

    class Recorder:
        def __init__(self, app):
            self.app, self.paths = app, []

        async def __call__(self, scope, receive, send):
            self.paths.append(scope.get("path"))
            await self.app(scope, receive, send)

    repo = tmp_path / "repo"
    install_copy(repo, tth_bundle.path, "tth")
    app = create_app(config=ServeConfig(repo=str(repo), no_auth=True).check())
    outer = Recorder(app)
    x = tth_bundle.x[:5]

    async def scenario():
        loop = asyncio.get_running_loop()
        config = Config(outer, lifespan="off", access_log=False, server_header=False, date_header=False)
        state = ServerState()
        server = await loop.create_server(lambda: FrontProtocol(config, state, {}, loop), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(INFER, json_infer(x)) + get("/v2/health/live") + post("/json", b"[]"))
        answers = []
        for _ in range(3):
            head = await reader.readuntil(b"\r\n\r\n")
            n = int(re.search(rb"content-length: (\d+)", head).group(1))
            answers.append((head.split(b" ")[1], await reader.readexactly(n)))
        writer.close()
        server.close()
        return answers

    try:
        (s1, b1), (s2, b2), (s3, b3) = asyncio.run(scenario())
    finally:
        app.plane.close()
    assert outer.paths == ["/v2/health/live"]
    assert s1 == b"200"
    np.testing.assert_allclose(json_scores(b1), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
    assert (s2, b2) == (b"200", b'{"live":true}')
    assert (s3, b3) == (
        b"400",
        orjson.dumps({"error": 'the request must be {"keys": [...], "values": [...], "model": "name"}'}),
    )


# ----------------------------------------------------------------- kept headers
def test_a_kept_binary_header_decodes_each_body_and_still_checks_it(tth_bundle):
    """The same binary-tensor header again: the new body's rows (not the first's), and a body of
    another length is checked in full (not taken for the kept one)."""
    from mlaas4hep.serve import http, tensors
    from mlaas4hep.serve.errors import InvalidRequest

    a, b = tth_bundle.x[:3], tth_bundle.x[3:6]
    body_a, hlen = binary_infer(a)
    body_b, _ = binary_infer(b)
    for body, x in ((body_a, a), (body_b, b), (body_a, a)):
        req, prefs = tensors.decode_request(body, hlen, "tth")
        np.testing.assert_array_equal(req.inputs["x"], x)
        assert req.outputs == ["probs"] and prefs.binary_outputs == {"probs"}
        y = tth_bundle.oracle.score(x)
        reply = http.tensors_reply("tth", 1, None, {"probs": y}, prefs)
        hl = int(reply.headers["Inference-Header-Content-Length"])
        assert orjson.loads(reply.body[:hl]) == {
            "model_name": "tth",
            "model_version": "1",
            "outputs": [
                {"name": "probs", "datatype": "FP32", "shape": [3, 1], "parameters": {"binary_data_size": 12}}
            ],
        }
        np.testing.assert_array_equal(np.frombuffer(reply.body[hl:], np.float32).reshape(3, 1), y)
    with pytest.raises(InvalidRequest, match="the body holds 4 bytes that no input claims"):
        tensors.decode_request(body_a + b"\0" * 4, hlen, "tth")
