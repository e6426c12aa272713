"""The server's intake (serve/intake.py): a bound on the request bytes all connections hold at once.

What an operator relies on: however many clients send large requests at the
same moment, the server holds at most ``--max-pending-mb`` of them; the others
wait (their connection is not read, or their gRPC stream gets no window) and
are served, in order, as the first ones are answered: nothing is refused,
lost or mixed up. Scores are checked against onnxruntime (:mod:`.oracle`).
"""

from __future__ import annotations

import re
import socket
import struct
import time

import numpy as np
import pytest

from mlaas4hep.serve.intake import Intake

from .conftest import HTTP, ServerProcess, repo_of
from .grpc_helpers import infer_request
from .oracle import ATOL
from .test_httpfront import Conn, json_infer, json_scores

INFER = "/v2/models/tth/infer"


# ----------------------------------------------------------------- the intake itself
def test_reservations_are_served_in_the_order_they_were_asked():
    intake, granted = Intake(100), []
    assert intake.take(60)
    assert not intake.take(50)
    first = intake.queue(50, lambda: granted.append("first"))
    assert not intake.take(10)  # it fits, but "first" asked before it
    second = intake.queue(10, lambda: granted.append("second"))
    intake.give(60)
    assert granted == ["first", "second"] and intake.used == 60
    assert (first.state, second.state) == ("granted", "granted")


def test_one_larger_than_the_intake_takes_all_of_it_once_nothing_else_is_held():
    intake, granted = Intake(100), []
    n = intake.need(10_000)
    assert n == 100
    assert intake.take(1)
    intake.queue(n, lambda: granted.append(n))
    intake.give(1)
    assert granted == [100] and intake.used == 100


def test_a_cancelled_reservation_does_not_hold_up_those_behind_it():
    intake, granted = Intake(100), []
    assert intake.take(60)
    big = intake.queue(80, lambda: granted.append("big"))
    intake.queue(30, lambda: granted.append("small"))
    intake.cancel(big)
    assert granted == ["small"] and intake.used == 90
    intake.force(20)  # a body read whole is counted even past the bound
    assert intake.used == 110 and not intake.take(1)


# ----------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def http_server(tth_bundle, tmp_path_factory):
    """Room for one request of ~30 kB at a time (bodies of 50 kB at most)."""
    repo = repo_of(tmp_path_factory, "intake-http", tth=tth_bundle.path)
    srv = ServerProcess(repo, "--max-body-mb", "0.05", "--max-pending-mb", "0.04").start()
    yield srv
    srv.stop()


def _start(url: str, body: bytes, sent: int) -> Conn:
    c = Conn(url)
    c.send(
        f"POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:sent]
    )
    return c


def _no_answer_within(c: Conn, seconds: float) -> bool:
    c.sock.settimeout(seconds)
    try:
        return not c.sock.recv(1, socket.MSG_PEEK)  # b"": closed (an answer would be bytes)
    except TimeoutError:
        return True
    finally:
        c.sock.settimeout(20)


def test_http_requests_past_the_intake_wait_and_are_served_in_turn(http_server, tth_bundle):
    xa, xb, xc = tth_bundle.x[:50], tth_bundle.x[50:100], tth_bundle.x[100:150]
    a_body, b_body, c_body = json_infer(xa), json_infer(xb), json_infer(xc)
    room = int(0.04 * 2**20)
    assert max(len(a_body), len(b_body)) < room < len(a_body) + len(b_body)  # one fits, not both
    a = _start(http_server.url, a_body, 1000)  # reserves its whole length, then stalls
    time.sleep(0.3)
    b = _start(http_server.url, b_body, 1000)  # does not fit beside a: its connection is not read
    time.sleep(0.3)
    b.send(b_body[1000:])
    assert _no_answer_within(b, 1.0)
    assert _intake_gauges(http_server.url) == (len(a_body), 1)  # what operators see meanwhile
    gone = _start(http_server.url, c_body, 1000)  # waits behind b, then leaves
    time.sleep(0.3)
    gone.sock.close()
    a.send(a_body[1000:])
    status, _, body = a.response()
    assert status == 200
    np.testing.assert_allclose(json_scores(body), tth_bundle.oracle.score(xa), rtol=0, atol=ATOL)
    status, _, body = b.response()  # b got a's bytes once a was answered
    assert status == 200
    np.testing.assert_allclose(json_scores(body), tth_bundle.oracle.score(xb), rtol=0, atol=ATOL)
    # the one that left gave its place back: a new large request goes at once
    c = _start(http_server.url, c_body, len(c_body))
    status, _, body = c.response()
    assert status == 200
    np.testing.assert_allclose(json_scores(body), tth_bundle.oracle.score(xc), rtol=0, atol=ATOL)
    for conn in (a, b, c):
        conn.sock.close()
    assert _intake_gauges(http_server.url) == (0, 0)


def _intake_gauges(url: str) -> tuple[int, int]:
    text = HTTP.get(url + "/metrics").text
    held = re.search(r"^mlaas4hep_request_bytes_pending (\S+)$", text, re.M)
    waiting = re.search(r"^mlaas4hep_requests_waiting_for_intake (\S+)$", text, re.M)
    assert held and waiting, text[-2000:]
    return int(float(held.group(1))), int(float(waiting.group(1)))


# ----------------------------------------------------------------- gRPC
h2conn = pytest.importorskip("h2.connection")
h2config = pytest.importorskip("h2.config")
h2events = pytest.importorskip("h2.events")


@pytest.fixture(scope="module")
def grpc_server(tth_bundle, tmp_path_factory):
    """Messages of 250 kB at most; room for one grant of ~135 kB at a time."""
    from .grpc_helpers import GrpcServerProcess

    repo = repo_of(tmp_path_factory, "intake-grpc", tth=tth_bundle.path)
    args = ("--grpc-frontend", "wire", "--max-body-mb", "0.25", "--max-pending-mb", "0.2")
    srv = GrpcServerProcess(repo, *args).start()
    yield srv
    srv.stop()


class H2Call:
    """One gRPC call on a connection of its own, driven by hand with the h2 package."""

    def __init__(self, port: int, message: bytes):
        self.c = h2conn.H2Connection(
            config=h2config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.c.initiate_connection()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sid = self.c.get_next_available_stream_id()
        path = "/inference.GRPCInferenceService/ModelInfer"
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x")]
        self.c.send_headers(self.sid, [*headers, ("content-type", "application/grpc"), ("te", "trailers")])
        self.left = b"\x00" + struct.pack(">I", len(message)) + message
        self.reply, self.status, self.granted = b"", None, False
        self.pump(0.3)

    def send(self, most: int) -> int:
        """Send what the stream's window allows, up to ``most`` bytes; the bytes sent."""
        n = min(self.c.local_flow_control_window(self.sid), len(self.left), most)
        while n > 0:
            k = min(n, 16384)
            chunk, self.left = self.left[:k], self.left[k:]
            self.c.send_data(self.sid, chunk, end_stream=not self.left)
            n -= k
        self.sock.sendall(self.c.data_to_send())
        return len(self.left)

    def pump(self, seconds: float) -> None:
        """Read what the server sends for ``seconds`` (or until the call ends)."""
        self.sock.sendall(self.c.data_to_send())
        self.sock.settimeout(0.05)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.status is None:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                break
            for ev in self.c.receive_data(data):
                if isinstance(ev, h2events.WindowUpdated) and ev.stream_id == self.sid:
                    self.granted = True
                elif isinstance(ev, h2events.DataReceived):
                    self.reply += ev.data
                    self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2events.TrailersReceived):
                    self.status = dict(ev.headers).get("grpc-status")
            self.sock.sendall(self.c.data_to_send())

    def scores(self, n: int) -> np.ndarray:
        from mlaas4hep.serve._proto import grpc_service_pb2 as pb

        r = pb.ModelInferResponse.FromString(self.reply[5:])
        return np.frombuffer(r.raw_output_contents[0], np.float32).reshape(n, -1)


def test_grpc_grants_past_the_intake_wait_and_are_served_in_turn(grpc_server, tth_bundle):
    xa, xb = tth_bundle.x[:1500], tth_bundle.x[1500:3000]  # ~190 kB each: beyond the first window
    a = H2Call(grpc_server.grpc_port, infer_request(xa))
    a.send(65535)
    a.pump(0.5)
    assert a.granted  # the intake held a's message
    b = H2Call(grpc_server.grpc_port, infer_request(xb))
    b.send(65535)
    b.pump(1.0)
    assert not b.granted  # not beside a's
    a.send(1 << 20)
    a.pump(10)
    assert a.status == "0"
    np.testing.assert_allclose(a.scores(len(xa)), tth_bundle.oracle.score(xa), atol=ATOL)
    b.pump(2.0)
    assert b.granted  # a's bytes came back: b's turn
    assert b.send(1 << 20) == 0
    b.pump(10)
    assert b.status == "0"
    np.testing.assert_allclose(b.scores(len(xb)), tth_bundle.oracle.score(xb), atol=ATOL)
    for call in (a, b):
        call.sock.close()
