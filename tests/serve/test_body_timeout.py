"""Request bodies that stop arriving (``--body-timeout``; serve/bodytimer.py, httpproto.py, grpcwire.py).

What an operator relies on: a client that announces a large body and then
stops sending cannot hold the server's intake (``--max-pending-mb``), nor the
requests queued behind it, for longer than the timeout: it is answered (HTTP
``408`` with the usual JSON error, gRPC ``DEADLINE_EXCEEDED``), its bytes go
back, and the requests that waited are served, with scores checked against
onnxruntime (:mod:`.oracle`). Waiting for room in the intake is not stalling,
and a slow client that keeps sending is served.

One server (HTTP and the wire gRPC front end) with a timeout of
:data:`TIMEOUT` seconds and room for one large request at a time serves the module.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from urllib.parse import unquote

import numpy as np
import orjson
import pytest

from .conftest import HTTP, TOKEN, repo_of
from .grpc_helpers import infer_request
from .oracle import ATOL
from .test_httpfront import Conn, json_infer, json_scores

h2conn = pytest.importorskip("h2.connection")
h2config = pytest.importorskip("h2.config")
h2events = pytest.importorskip("h2.events")

TIMEOUT = 0.6
#: a stalled body is cut off between TIMEOUT and 1.25 TIMEOUT after its last byte; plus a margin
LATEST = 1.25 * TIMEOUT + 1.0
STALLED = f"the request body stopped arriving: nothing came in {TIMEOUT:g} s (the server's --body-timeout)"
INFER = "/v2/models/tth/infer"
HEAD = 1.0  # --head-timeout
EARLY = 0.01  # the event loop's timers may fire up to its clock's resolution (1 ms) early
HEAD_LATE = f"the request's head did not arrive whole in {HEAD:g} s (the server's --head-timeout)"
ROOM = int(0.2 * 2**20)  # --max-pending-mb 0.2


@pytest.fixture(scope="module")
def server(tth_bundle, tmp_path_factory):
    from .grpc_helpers import GrpcServerProcess

    repo = repo_of(tmp_path_factory, "body-timeout", tth=tth_bundle.path)
    args = ("--grpc-frontend", "wire", "--max-body-mb", "0.25", "--max-pending-mb", "0.2")
    srv = GrpcServerProcess(repo, *args, "--body-timeout", str(TIMEOUT), "--head-timeout", str(HEAD)).start()
    yield srv
    srv.stop()


def metrics(url: str) -> dict[str, float]:
    """The intake's gauges (``pending`` bytes, ``waiting`` requests) and the body timeouts by protocol."""
    text = HTTP.get(url + "/metrics").text
    out = {}
    for key, name in (
        ("pending", "mlaas4hep_request_bytes_pending"),
        ("waiting", "mlaas4hep_requests_waiting_for_intake"),
        ("http", 'mlaas4hep_request_body_timeouts_total{protocol="http"}'),
        ("grpc", 'mlaas4hep_request_body_timeouts_total{protocol="grpc"}'),
    ):
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert found, (name, text[-2000:])
        out[key] = float(found.group(1))
    return out


def test_the_timeouts_of_every_worker_are_added_up():
    """With ``--workers N`` the process answering a scrape adds the others' snapshots (as JSON)."""
    from mlaas4hep.serve.http import http_status
    from mlaas4hep.serve.metrics import Metrics

    mine, other = Metrics(http_status), Metrics(http_status)
    mine.body_timeout("http")
    other.body_timeout("http")
    other.body_timeout("grpc")
    mine.peers = lambda: [orjson.loads(orjson.dumps(other.snapshot()))]
    text = mine.exposition()[0].decode()
    assert 'mlaas4hep_request_body_timeouts_total{protocol="http"} 2.0' in text
    assert 'mlaas4hep_request_body_timeouts_total{protocol="grpc"} 1.0' in text


# ----------------------------------------------------------------- HTTP
def _start(url: str, path: str, body: bytes, sent: int) -> Conn:
    c = Conn(url)
    c.sock.settimeout(LATEST + 5)  # the old server never answers: fail, do not hang
    c.send(
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:sent]
    )
    return c


def no_answer_yet(c: Conn) -> bool:
    c.sock.settimeout(0.01)
    try:
        return not c.sock.recv(1, socket.MSG_PEEK)  # b"": closed; an answer would be bytes
    except TimeoutError:
        return True
    finally:
        c.sock.settimeout(LATEST + 5)


def test_a_stalled_http_body_is_answered_408_and_the_request_behind_it_is_served(server, tth_bundle):
    xa, xb = tth_bundle.x[:300], tth_bundle.x[300:600]
    a_body, b_body = json_infer(xa), json_infer(xb)
    assert max(len(a_body), len(b_body)) < ROOM < len(a_body) + len(b_body)  # one fits, not both
    before = metrics(server.url)
    a = _start(server.url, INFER, a_body, 1000)  # reserves its whole length
    time.sleep(0.1)
    b = _start(server.url, INFER, b_body, 1000)  # waits in the intake behind a
    b.send(b_body[1000:])
    for i in range(5):  # a sends a little now and then, while b waits longer than the timeout
        time.sleep(TIMEOUT / 3)
        a.send(a_body[1000 + 10 * i : 1010 + 10 * i])
    t0 = time.monotonic()  # then a stops sending
    assert no_answer_yet(b)  # waiting for room is not stalling
    status, headers, body = a.response()
    waited = time.monotonic() - t0
    assert (status, orjson.loads(body)) == (408, {"error": STALLED})
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert TIMEOUT <= waited < LATEST, waited
    assert a.closed()  # the rest of its body would not be read
    status, _, body = b.response()  # b waited longer than the timeout, then got a's bytes
    assert status == 200, body
    np.testing.assert_allclose(json_scores(body), tth_bundle.oracle.score(xb), rtol=0, atol=ATOL)
    after = metrics(server.url)
    assert after["pending"] == after["waiting"] == 0
    assert after["http"] == before["http"] + 1
    for c in (a, b):
        c.close()


def test_a_slow_http_client_that_keeps_sending_is_served(server, tth_bundle):
    x = tth_bundle.x[:40]
    body = json_infer(x)
    c = _start(server.url, INFER, body, 0)
    pieces = np.array_split(np.frombuffer(body, np.uint8), 8)  # 8 reads, TIMEOUT/3 apart: 2.7 TIMEOUTs
    for piece in pieces:
        time.sleep(TIMEOUT / 3)
        c.send(piece.tobytes())
    status, _, reply = c.response()
    assert status == 200, reply
    np.testing.assert_allclose(json_scores(reply), tth_bundle.oracle.score(x), rtol=0, atol=ATOL)
    c.close()


def test_a_stalled_body_through_the_asgi_app_is_answered_408_too(server, tth_bundle):
    """A request that is not on the HTTP front end's own path (here: a query string) goes through
    uvicorn and Starlette; its body is cut off the same way."""
    body = json_infer(tth_bundle.x[:20])
    before = metrics(server.url)
    c = _start(server.url, INFER + "?trace=1", body, 100)
    t0 = time.monotonic()
    status, headers, reply = c.response()
    assert (status, orjson.loads(reply)) == (408, {"error": STALLED})
    assert headers["connection"] == "close" and TIMEOUT <= time.monotonic() - t0 < LATEST
    assert c.closed()
    assert metrics(server.url)["http"] == before["http"] + 1
    c.close()


def test_a_stalled_upload_is_answered_408(server):
    """The repository's upload route (a multipart form, spooled by Starlette): the same 408."""
    part = b'--XX\r\nContent-Disposition: form-data; name="model"; filename="m.onnx"\r\n\r\nonnx'
    c = Conn(server.url)
    c.sock.settimeout(LATEST + 5)
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: 100000\r\n\r\n" + part
    )
    t0 = time.monotonic()
    status, headers, reply = c.response()
    assert (status, orjson.loads(reply)) == (408, {"error": STALLED})
    assert headers["connection"] == "close" and TIMEOUT <= time.monotonic() - t0 < LATEST
    assert c.closed()
    c.close()


# ----------------------------------------------------------------- gRPC
class H2:
    """One HTTP/2 connection carrying gRPC calls, driven by hand with the h2 package."""

    def __init__(self, port: int):
        self.c = h2conn.H2Connection(
            config=h2config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.c.initiate_connection()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.left: dict[int, bytes] = {}
        self.granted: set[int] = set()
        self.reply: dict[int, bytes] = {}
        self.status: dict[int, dict[str, str]] = {}  # the trailers of each ended call
        self.reset: dict[int, int] = {}  # RST_STREAM error codes

    def call(self, message: bytes) -> int:
        sid = self.c.get_next_available_stream_id()
        path = "/inference.GRPCInferenceService/ModelInfer"
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x")]
        self.c.send_headers(sid, [*headers, ("content-type", "application/grpc"), ("te", "trailers")])
        self.left[sid], self.reply[sid] = b"\x00" + struct.pack(">I", len(message)) + message, b""
        return sid

    def send(self, sid: int, most: int) -> int:
        """Send what the stream's window allows, up to ``most`` bytes; the bytes still to send."""
        n = min(self.c.local_flow_control_window(sid), len(self.left[sid]), most)
        while n > 0:
            k = min(n, 16384)
            chunk, self.left[sid] = self.left[sid][:k], self.left[sid][k:]
            self.c.send_data(sid, chunk, end_stream=not self.left[sid])
            n -= k
        self.sock.sendall(self.c.data_to_send())
        return len(self.left[sid])

    def pump(self, seconds: float, until=lambda: False) -> None:
        """Read what the server sends for ``seconds``, or until ``until()``."""
        self.sock.sendall(self.c.data_to_send())
        self.sock.settimeout(0.05)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            assert data, "the server closed the connection"
            for ev in self.c.receive_data(data):
                if isinstance(ev, h2events.WindowUpdated) and ev.stream_id:
                    self.granted.add(ev.stream_id)
                elif isinstance(ev, h2events.DataReceived):
                    self.reply[ev.stream_id] += ev.data
                    self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2events.TrailersReceived, h2events.ResponseReceived)):
                    headers = dict(ev.headers)
                    if "grpc-status" in headers:  # trailers, or a trailers-only answer
                        self.status[ev.stream_id] = headers
                elif isinstance(ev, h2events.StreamReset):
                    self.reset[ev.stream_id] = ev.error_code
            self.sock.sendall(self.c.data_to_send())

    def scores(self, sid: int, n: int) -> np.ndarray:
        from mlaas4hep.serve._proto import grpc_service_pb2 as pb

        r = pb.ModelInferResponse.FromString(self.reply[sid][5:])
        return np.frombuffer(r.raw_output_contents[0], np.float32).reshape(n, -1)


def test_a_stalled_grpc_message_is_ended_and_the_call_waiting_for_a_grant_gets_it(server, tth_bundle):
    xa, xb, xc = tth_bundle.x[:1500], tth_bundle.x[1500:3000], tth_bundle.x[3000:3003]
    size = len(infer_request(xa))
    assert 65535 < size < ROOM < 2 * size - 2 * 65535  # one grant fits, not two
    before = metrics(server.url)
    a = H2(server.grpc_port)
    stalls = a.call(infer_request(xa))
    a.send(stalls, 65535)  # its first window, prefix included: granted the rest, then nothing more
    a.pump(0.3, lambda: stalls in a.granted)
    assert stalls in a.granted
    b = H2(server.grpc_port)
    waits = b.call(infer_request(xb))
    b.send(waits, 65535)
    for _ in range(5):  # a sends a little now and then, while b waits longer than the timeout
        b.pump(TIMEOUT / 3)
        a.send(stalls, 100)
    t0 = time.monotonic()  # then a stops sending
    b.pump(0.05)
    assert waits not in b.granted and waits not in b.status  # waiting for a grant is not stalling
    a.pump(LATEST, lambda: stalls in a.status)
    assert stalls in a.status, f"the stalled call was not ended in {LATEST} s"
    assert TIMEOUT <= time.monotonic() - t0 < LATEST
    assert a.status[stalls]["grpc-status"] == "4"  # DEADLINE_EXCEEDED
    assert unquote(a.status[stalls]["grpc-message"]) == STALLED
    a.pump(0.5, lambda: stalls in a.reset)
    assert a.reset[stalls] == 0  # RST_STREAM NO_ERROR: stop sending, the answer is given
    # the grant went back: b gets its window and is served
    b.pump(2.0, lambda: waits in b.granted)
    assert waits in b.granted and b.send(waits, 1 << 20) == 0
    b.pump(10, lambda: waits in b.status)
    assert b.status[waits]["grpc-status"] == "0"
    np.testing.assert_allclose(b.scores(waits, len(xb)), tth_bundle.oracle.score(xb), atol=ATOL)
    # and a's connection goes on serving
    again = a.call(infer_request(xc))
    assert a.send(again, 1 << 20) == 0
    a.pump(10, lambda: again in a.status)
    assert a.status[again]["grpc-status"] == "0"
    np.testing.assert_allclose(a.scores(again, len(xc)), tth_bundle.oracle.score(xc), atol=ATOL)
    after = metrics(server.url)
    assert after["pending"] == after["waiting"] == 0
    assert after["grpc"] == before["grpc"] + 1
    for h2 in (a, b):
        h2.sock.close()


# ----------------------------------------------------------------- heads (--head-timeout)
def _head_timeouts(url: str) -> float:
    found = re.search(r"^mlaas4hep_request_head_timeouts_total (\S+)$", HTTP.get(url + "/metrics").text, re.M)
    assert found
    return float(found.group(1))


def _answered_408(c: Conn, since: float) -> float:
    """The 408 of a head that did not arrive in time, then the connection's close; its delay."""
    status, headers, body = c.response()
    waited = time.monotonic() - since
    assert (status, headers["connection"], orjson.loads(body)) == (408, "close", {"error": HEAD_LATE})
    assert c.closed()
    return waited


def test_a_connection_that_sends_nothing_or_a_header_line_now_and_then_is_closed(server):
    """Slowloris on file descriptors: silence, or a head trickling in, is answered 408 after
    --head-timeout, from the connection's opening (the trickle's bytes do not restart it)."""
    before = _head_timeouts(server.url)
    opened = time.monotonic()  # before the server's clock starts
    silent, trickle = Conn(server.url), Conn(server.url)
    trickle.send(f"POST {INFER} HTTP/1.1\r\n".encode())
    for i in range(4):  # a header line every 0.4 s: each within the time, the head never whole
        time.sleep(0.4)
        trickle.send(f"X-Line-{i}: {i}\r\n".encode())
    assert HEAD - EARLY <= _answered_408(trickle, opened) < HEAD + 1.0
    assert HEAD - EARLY <= _answered_408(silent, opened) < HEAD + 1.5
    assert _head_timeouts(server.url) == before + 2


def test_a_kept_alive_connection_may_idle_but_its_next_head_must_arrive_in_time(server):
    """Between requests uvicorn's keep-alive timeout (30 s) rules, not --head-timeout; a head
    begun on a kept-alive connection has --head-timeout from its first byte."""
    c = Conn(server.url)
    get = b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n"
    c.send(get)
    assert c.response()[0] == 200
    time.sleep(HEAD + 0.5)  # idle, longer than --head-timeout
    c.send(get)
    assert c.response()[0] == 200
    begun = time.monotonic()
    c.send(f"POST {INFER} HTTP/1.1\r\nHost: test\r\n".encode())  # and then nothing
    assert HEAD - EARLY <= _answered_408(c, begun) < HEAD + 1.0


def test_a_slow_grpc_client_that_keeps_sending_one_frame_is_served(server, tth_bundle):
    """A message in one DATA frame whose bytes come in 8 reads TIMEOUT/3 apart (2.7 TIMEOUTs): served."""
    x = tth_bundle.x[:40]
    a = H2(server.grpc_port)
    sid = a.call(infer_request(x))
    a.sock.sendall(a.c.data_to_send())  # the call's headers
    message = a.left.pop(sid)
    assert len(message) <= 16384  # one frame
    a.c.send_data(sid, message, end_stream=True)
    a.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in np.array_split(np.frombuffer(a.c.data_to_send(), np.uint8), 8):
        time.sleep(TIMEOUT / 3)
        a.sock.sendall(piece.tobytes())
    a.pump(10, lambda: sid in a.status)
    assert a.status[sid]["grpc-status"] == "0", a.status[sid]
    np.testing.assert_allclose(a.scores(sid, len(x)), tth_bundle.oracle.score(x), atol=ATOL)
    a.sock.close()
