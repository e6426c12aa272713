"""Hostile HTTP/2 clients against the wire gRPC front end (``serve/grpcwire.py``, ``serve/h2limits.py``).

What a user relies on: whatever one client sends on the gRPC port, the
server's memory stays bounded, the client is told why it is cut off (GOAWAY
with the HTTP/2 error code, or RST_STREAM) and every other client's calls go
on. One server process (``--max-body-mb 1``) serves the whole module; its RSS
is read from ``/proc``, and a real grpcio client checks a score after each case.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
import time

import numpy as np
import pytest

from .conftest import HTTP, repo_of
from .oracle import ATOL

grpc = pytest.importorskip("grpc")
hpack = pytest.importorskip("hpack")
h2conn = pytest.importorskip("h2.connection")
h2config = pytest.importorskip("h2.config")
hyperframe = pytest.importorskip("hyperframe.frame")
from mlaas4hep.serve._proto import grpc_service_pb2 as pb  # noqa: E402
from mlaas4hep.serve._proto import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

from .grpc_helpers import GrpcServerProcess  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS = 0x1, 0x4
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0, 1, 3, 6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 7, 8, 9, 11
INFER = "/inference.GRPCInferenceService/ModelInfer"
MB = 2**20
#: what one hostile connection may add to the server's RSS
RSS_SLACK = 50 * MB


@pytest.fixture(scope="module")
def server(tth_bundle, tmp_path_factory):
    repo = repo_of(tmp_path_factory, "wire-hostile", tth=tth_bundle.path)
    srv = GrpcServerProcess(repo, "--grpc-frontend", "wire", "--max-body-mb", "1").start()
    yield srv
    srv.stop()


def rss(srv) -> int:
    with open(f"/proc/{srv.proc.pid}/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + struct.pack(">I", sid) + payload


def request_headers(enc: hpack.Encoder, path: str = INFER, extra: tuple = ()) -> bytes:
    return enc.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]
    )


def message(msg: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def connect(srv, settings: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.grpc_port))
    s.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))
    return s


def frames_of(data: bytes) -> list:
    """The server's bytes as hyperframe frames (which checks each frame's layout)."""
    out, view = [], memoryview(data)
    while len(view) >= 9:
        f, n = hyperframe.Frame.parse_frame_header(view[:9])
        assert len(view) >= 9 + n, "a truncated frame"
        f.parse_body(view[9 : 9 + n])
        out.append(f)
        view = view[9 + n :]
    assert not len(view), "trailing bytes that are no frame"
    return out


def read_all(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (within ``timeout`` seconds)."""
    s.settimeout(timeout)
    data = b""
    try:
        while chunk := s.recv(1 << 20):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"the server did not close the connection in {timeout} s") from None
    except ConnectionResetError:
        pass
    return data


def send_until_closed(s: socket.socket, chunks, seconds: float = 10.0) -> int:
    """Send ``chunks`` while the server reads them; the bytes sent (stops when blocked for 3 s)."""
    s.settimeout(3.0)
    sent, deadline = 0, time.monotonic() + seconds
    try:
        for chunk in chunks:
            if time.monotonic() > deadline:
                break
            s.sendall(chunk)
            sent += len(chunk)
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass
    return sent


def goaway(frames) -> tuple[int, int]:
    """(last stream, error code) of the server's GOAWAY, which must be its last frame."""
    assert frames and isinstance(frames[-1], hyperframe.GoAwayFrame), [type(f).__name__ for f in frames[-5:]]
    return frames[-1].last_stream_id, frames[-1].error_code


def pending(srv) -> float:
    """The request bytes the server's intake counts now (its metric)."""
    text = HTTP.get(srv.url + "/metrics").text
    found = re.search(r"^mlaas4hep_request_bytes_pending (\S+)$", text, re.M)
    assert found
    return float(found.group(1))


def still_serves(srv, tth_bundle) -> None:
    """Another client's call gets its score."""
    x = np.ascontiguousarray(tth_bundle.x[:3], dtype=np.float32)
    req = pb.ModelInferRequest(model_name="tth")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(srv.grpc_url) as ch:
        r = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
    y = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(3, -1)
    np.testing.assert_allclose(y, tth_bundle.oracle.score(x), atol=ATOL)


def test_settings_announce_the_bounds(server):
    s = connect(server)
    s.settimeout(5)
    time.sleep(0.2)
    data = s.recv(1 << 16)
    s.close()
    first = frames_of(data)[0]
    assert isinstance(first, hyperframe.SettingsFrame)
    assert first.settings[hyperframe.SettingsFrame.MAX_CONCURRENT_STREAMS] == 128
    assert first.settings[hyperframe.SettingsFrame.MAX_HEADER_LIST_SIZE] == 16384


def test_flow_control_bounds_what_a_polite_client_may_send(server, tth_bundle):
    """10 calls announcing 1 MB messages and never finishing them: the server lets two send theirs."""
    c = h2conn.H2Connection(config=h2config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    s = socket.create_connection(("127.0.0.1", server.grpc_port))
    s.setblocking(False)
    limit = 2**20
    sids = []
    for _ in range(10):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", INFER), (":authority", "x")])
        sids.append(sid)
    left = {sid: limit + 5 for sid in sids}
    prefix = {sid: b"\x00" + struct.pack(">I", limit) for sid in sids}
    sent, idle_since, before = 0, time.monotonic(), rss(server)
    while time.monotonic() - idle_since < 1.0:
        progress = False
        for sid in sids:
            n = min(c.local_flow_control_window(sid), left[sid], 16384)
            if n > 0:
                head, prefix[sid] = prefix[sid][:n], prefix[sid][n:]
                c.send_data(sid, head + bytes(n - len(head)))
                left[sid] -= n
                sent += n
                progress = True
        try:
            s.sendall(c.data_to_send())
            c.receive_data(s.recv(1 << 20))
        except BlockingIOError:
            pass
        if progress:
            idle_since = time.monotonic()
        time.sleep(0.005)
    s.close()
    granted = 2 * (limit + 5)  # the budget: two messages of the largest size
    assert granted <= sent <= granted + 8 * 65535  # the others: their first window only
    assert sum(1 for v in left.values() if v == 0) == 2
    assert rss(server) - before < RSS_SLACK
    still_serves(server, tth_bundle)


def test_a_client_ignoring_flow_control_is_cut_off(server, tth_bundle):
    """300 streams pushing 256 kB each regardless of windows: 75 MB the old front end would buffer."""
    enc = hpack.Encoder()
    s = connect(server)
    before = rss(server)

    def flood():
        for i in range(300):
            sid = 2 * i + 1
            yield frame(HEADERS, END_HEADERS, sid, request_headers(enc))
            # a message the default window holds (so the connection is not widened), and more
            yield frame(DATA, 0, sid, b"\x00" + struct.pack(">I", 2**16 - 10) + bytes(2**16 - 5))
            for _ in range(3):
                yield frame(DATA, 0, sid, bytes(2**16))

    send_until_closed(s, flood())
    frames = frames_of(read_all(s))
    s.close()
    resets = {f.stream_id: f.error_code for f in frames if isinstance(f, hyperframe.RstStreamFrame)}
    assert goaway(frames)[1] == ENHANCE_YOUR_CALM  # too many streams it made the server reset
    assert list(resets.values()).count(FLOW_CONTROL_ERROR) > 100
    assert rss(server) - before < RSS_SLACK
    still_serves(server, tth_bundle)


def test_concurrent_streams_past_the_limit_are_refused(server, tth_bundle):
    enc = hpack.Encoder()
    s = connect(server)
    s.sendall(b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, request_headers(enc)) for i in range(180)))
    s.sendall(frame(PING, 0, 0, b"12345678"))
    s.settimeout(10)
    data = b""
    while b"12345678" not in data:  # our PING's ACK: every HEADERS before it is answered
        data += s.recv(1 << 16)
    s.close()
    refused = [f.stream_id for f in frames_of(data) if isinstance(f, hyperframe.RstStreamFrame)]
    assert refused == [2 * i + 1 for i in range(128, 180)]
    still_serves(server, tth_bundle)


def test_continuation_flood_is_cut_off(server, tth_bundle):
    """CVE-2024-27316: a header block that never ends."""
    enc = hpack.Encoder()
    s = connect(server)
    before = rss(server)
    junk = bytes(16384)
    chunks = [frame(HEADERS, 0, 1, request_headers(enc))] + [frame(CONTINUATION, 0, 1, junk)] * 6000  # 100 MB
    send_until_closed(s, chunks)
    _, code = goaway(frames_of(read_all(s)))
    s.close()
    assert code == ENHANCE_YOUR_CALM
    assert rss(server) - before < RSS_SLACK
    still_serves(server, tth_bundle)


@pytest.mark.parametrize(
    ("case", "code"),
    [("header list of 20 kB", ENHANCE_YOUR_CALM), ("HPACK table of 64 kB", COMPRESSION_ERROR)],
)
def test_headers_and_hpack_table_are_bounded(server, tth_bundle, case, code):
    enc = hpack.Encoder()
    if case.startswith("HPACK"):
        enc.header_table_size = 65536  # the encoder announces the size in its next block
        block = request_headers(enc)
    else:
        block = request_headers(enc, extra=(("x-big", "a" * 20_000),))
    s = connect(server)
    s.sendall(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    _, got = goaway(frames_of(read_all(s)))
    s.close()
    assert got == code
    still_serves(server, tth_bundle)


def test_rapid_reset_is_cut_off(server, tth_bundle):
    """CVE-2023-44487: calls opened and cancelled at once, over and over."""
    enc = hpack.Encoder()
    s = connect(server)
    req = message(pb.ModelInferRequest(model_name="tth").SerializeToString())
    rst = struct.pack(">I", CANCEL)
    chunks = (
        frame(HEADERS, END_HEADERS, 2 * i + 1, request_headers(enc))
        + frame(DATA, END_STREAM, 2 * i + 1, req)
        + frame(RST_STREAM, 0, 2 * i + 1, rst)
        for i in range(20_000)
    )
    send_until_closed(s, chunks)
    last, code = goaway(frames_of(read_all(s)))
    s.close()
    assert code == ENHANCE_YOUR_CALM
    assert last <= 2 * 400 + 1  # 200 cancels, plus at most one per call that was answered first
    still_serves(server, tth_bundle)


@pytest.mark.parametrize("kind", [PING, SETTINGS])
def test_ping_and_settings_floods_are_cut_off(server, tth_bundle, kind):
    s = connect(server)
    payload = b"abcdefgh" if kind == PING else b""
    send_until_closed(s, [frame(kind, 0, 0, payload)] * 5000)
    frames = frames_of(read_all(s))
    s.close()
    _, code = goaway(frames)
    acks = [f for f in frames if type(f) is type(frames[0]) and "ACK" in f.flags]
    assert code == ENHANCE_YOUR_CALM and len(acks) <= 1001


def test_keepalive_pings_over_time_are_no_flood(server):
    """An idle channel's keep-alive PINGs add up over hours: only a burst within a second counts."""
    s = connect(server)
    for burst in range(2):
        s.sendall(frame(PING, 0, 0, b"keepaliv") * 600)
        time.sleep(1.2 if burst == 0 else 0)
    s.sendall(frame(PING, 0, 0, b"lastping"))
    s.settimeout(10)
    data = b""
    while b"lastping" not in data:
        chunk = s.recv(1 << 16)
        assert chunk, "the server closed the connection"
        data += chunk
    s.close()
    frames = frames_of(data[: _complete(data)])
    assert not any(isinstance(f, hyperframe.GoAwayFrame) for f in frames)
    assert sum(isinstance(f, hyperframe.PingFrame) for f in frames) == 1201


def test_a_client_that_does_not_read_is_not_buffered_for(server, tth_bundle):
    """PINGs (a call every 900 to look busy) from a client that never reads their answers.

    The old front end read them all and kept every answer: RSS grew with what the client sent.
    """
    enc = hpack.Encoder()
    s = connect(server)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = rss(server)
    block = request_headers(enc, "/inference.GRPCInferenceService/ServerLive")
    live = message(b"")
    pings = frame(PING, 0, 0, b"abcdefgh") * 900

    def chunks():
        for i in range(4000):  # 60 MB of PINGs, 60 MB of answers
            yield (
                pings
                + frame(HEADERS, END_HEADERS, 2 * i + 1, block)
                + frame(DATA, END_STREAM, 2 * i + 1, live)
            )

    sent = send_until_closed(s, chunks(), seconds=12)
    grown = rss(server) - before
    still_serves(server, tth_bundle)  # while that connection is stuck
    s.close()
    assert sent < 20 * MB  # the server stopped reading it (what it sent fills the kernel's buffers)
    assert grown < RSS_SLACK


def test_compressed_calls_count_what_they_decompress(server, tth_bundle):
    """100 gzip calls of 1 kB, each a 1 MB request once decompressed, sent at once: the
    connection's budget (twice the message limit) holds two; the others are told to retry."""
    import gzip

    enc = hpack.Encoder()
    k = tth_bundle.x.shape[1]
    rows = (2**20 - 4096) // (4 * k)
    req = pb.ModelInferRequest(model_name="tth")
    req.inputs.add(name="x", datatype="FP32", shape=[rows, k])
    req.raw_input_contents.append(bytes(4 * k * rows))
    raw = req.SerializeToString()
    packed = gzip.compress(raw)
    assert len(raw) <= 2**20 and len(packed) < 4096
    body = b"\x01" + struct.pack(">I", len(packed)) + packed
    block = request_headers(enc, extra=(("grpc-encoding", "gzip"),))
    s = connect(server)
    before = rss(server)
    s.sendall(
        b"".join(
            frame(HEADERS, END_HEADERS, 2 * i + 1, block) + frame(DATA, END_STREAM, 2 * i + 1, body)
            for i in range(100)
        )
    )
    s.settimeout(30)
    dec, data, status, message = hpack.Decoder(), b"", {}, {}
    while len(status) < 100:
        chunk = s.recv(1 << 16)
        assert chunk, "the server closed the connection"
        data += chunk
        end = _complete(data)
        for f in frames_of(data[:end]):
            if isinstance(f, hyperframe.HeadersFrame):
                h = dict(dec.decode(f.data))
                if "grpc-status" in h:
                    status[f.stream_id] = int(h["grpc-status"])
                    message[f.stream_id] = h.get("grpc-message", "")
        data = data[end:]
    grown = rss(server) - before
    s.close()
    exhausted = [sid for sid, code in status.items() if code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]
    assert len(exhausted) >= 50 and grpc.StatusCode.OK.value[0] in status.values()
    assert message[exhausted[0]].startswith(
        "the connection's calls in flight hold too many bytes to decompress"
    )
    assert grown < RSS_SLACK
    still_serves(server, tth_bundle)


def test_grpc_timeout_is_a_deadline(server, tth_bundle):
    """A call's ``grpc-timeout`` (1 ns: over before the model answers) ends it with DEADLINE_EXCEEDED."""
    enc = hpack.Encoder()
    s = connect(server)
    x = np.ascontiguousarray(tth_bundle.x[:1], dtype=np.float32)
    req = pb.ModelInferRequest(model_name="tth")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    block = request_headers(enc, extra=(("grpc-timeout", "1n"),))
    s.sendall(
        frame(HEADERS, END_HEADERS, 1, block) + frame(DATA, END_STREAM, 1, message(req.SerializeToString()))
    )
    s.settimeout(10)
    dec, data, status = hpack.Decoder(), b"", None
    while status is None:
        data += s.recv(1 << 16)
        end = _complete(data)
        for f in frames_of(data[:end]):
            if isinstance(f, hyperframe.HeadersFrame):
                status = dict(dec.decode(f.data)).get("grpc-status", status)
        data = data[end:]
    s.close()
    assert int(status) == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


def test_idle_connection_without_preface_is_closed(tth_bundle, tmp_path):
    from mlaas4hep.serve import create_app
    from mlaas4hep.serve.grpc_server import InferenceService
    from mlaas4hep.serve.grpcwire import WireServer
    from mlaas4hep.serve.h2limits import Limits

    repo = tmp_path / "repo"
    repo.mkdir()
    app = create_app(repo)

    async def main() -> tuple[bytes, float]:
        wire = WireServer(InferenceService(app.state), 2**20, Limits(preface_timeout=0.5))
        port = await wire.start("127.0.0.1", 0)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(PREFACE[:10])  # and nothing more
            t0 = time.monotonic()
            data = await asyncio.wait_for(r.read(), 30)  # until the server closes
            w.close()
            return data, time.monotonic() - t0
        finally:
            await wire.stop(0)

    data, waited = asyncio.run(main())
    assert 0.4 <= waited < 5
    assert goaway(frames_of(data))[1] == NO_ERROR


# ------------------------------------------------------------------ fuzz
FRAME_KINDS = [
    DATA,
    HEADERS,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    PUSH,
    PING,
    GOAWAY,
    WINDOW_UPDATE,
    CONTINUATION,
    10,
    200,
]
ERROR_CODES = {
    NO_ERROR,
    PROTOCOL_ERROR,
    2,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
}


def _random_frame(rng: random.Random, enc: hpack.Encoder, sid: int) -> bytes:
    kind = rng.choice(FRAME_KINDS)
    flags = rng.choice([0, END_STREAM, END_HEADERS, END_STREAM | END_HEADERS, 0x8, 0x20, rng.randrange(256)])
    stream = rng.choice([sid, sid, 0, sid + 2, sid - 2 if sid > 2 else 1, 2, 2**31 - 1])
    if kind == HEADERS and rng.random() < 0.6:
        payload = request_headers(
            enc, rng.choice([INFER, "/x", "/inference.GRPCInferenceService/ServerLive"])
        )
    elif kind == DATA and rng.random() < 0.5:
        payload = message(rng.randbytes(rng.randrange(40)))
    elif kind in (RST_STREAM, WINDOW_UPDATE) and rng.random() < 0.7:
        payload = struct.pack(">I", rng.choice([0, 1, 8, 65535, 2**31 - 1, rng.randrange(2**32)]))
    elif kind == SETTINGS and rng.random() < 0.7:
        payload = b"".join(
            struct.pack(
                ">HI", rng.randrange(1, 9), rng.choice([0, 1, 16384, 2**24, 2**31, rng.randrange(2**32)])
            )
            for _ in range(rng.randrange(1, 4))
        )
    else:
        payload = rng.randbytes(rng.choice([0, 1, 4, 5, 8, 9, rng.randrange(100)]))
    if rng.random() < 0.05:  # a header that lies about the length
        return len(payload).to_bytes(3, "big")[:2] + bytes((rng.randrange(256), kind, flags)) + b"\0\0\0\1"
    return frame(kind, flags, stream, payload)


def test_random_frames_get_protocol_answers(server, tth_bundle):
    """300 connections of random frames (seeded): every answer parses, every GOAWAY closes, no crash."""
    rng = random.Random(25)
    before, goaways = rss(server), 0
    for case in range(300):
        enc = hpack.Encoder()
        s = connect(server)
        sid = 1 + 2 * rng.randrange(4)
        body = b"".join(_random_frame(rng, enc, sid) for _ in range(rng.randrange(1, 7)))
        try:
            s.sendall(body)
            s.shutdown(socket.SHUT_WR)  # the server answers what it read, and closes
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = read_all(s)
        s.close()
        frames = frames_of(data[: _complete(data)])  # a reply cut by the close: what came of it
        for f in frames:
            assert type(f).__name__ in {
                "DataFrame",
                "HeadersFrame",
                "RstStreamFrame",
                "SettingsFrame",
                "PingFrame",
                "GoAwayFrame",
                "WindowUpdateFrame",
            }, (case, f)
            if isinstance(f, hyperframe.PingFrame):
                assert "ACK" in f.flags
            if isinstance(f, hyperframe.RstStreamFrame):
                assert f.error_code in ERROR_CODES | {REFUSED_STREAM}, (case, f)
        if any(isinstance(f, hyperframe.GoAwayFrame) for f in frames):
            goaways += 1
            _, code = goaway(frames)
            assert code in ERROR_CODES, (case, code)
        assert server.alive()
    assert 30 < goaways < 300  # the generator makes both kinds of connection
    assert rss(server) - before < RSS_SLACK
    still_serves(server, tth_bundle)


def _complete(data: bytes) -> int:
    """How many leading bytes of ``data`` are whole frames."""
    i = 0
    while len(data) - i >= 9 and len(data) - i >= 9 + int.from_bytes(data[i : i + 3], "big"):
        i += 9 + int.from_bytes(data[i : i + 3], "big")
    return i


def reply_of(s: socket.socket, sid: int, timeout: float = 10.0) -> tuple[bytes, list]:
    """(the reply message, every frame) of call ``sid``: read until its trailers."""
    s.settimeout(timeout)
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        data += s.recv(1 << 20)
        whole, view = b"", memoryview(data)
        while len(view) >= 9 and len(view) >= 9 + int.from_bytes(view[:3], "big"):
            whole += view[: 9 + int.from_bytes(view[:3], "big")]
            view = view[9 + int.from_bytes(view[:3], "big") :]
        frames = frames_of(whole)
        if any(
            isinstance(f, hyperframe.HeadersFrame) and f.stream_id == sid and "END_STREAM" in f.flags
            for f in frames
        ):
            body = b"".join(
                f.data for f in frames if isinstance(f, hyperframe.DataFrame) and f.stream_id == sid
            )
            return body[5:], frames
    raise AssertionError(f"no reply in {timeout} s")


@pytest.mark.parametrize("seed", range(3))
def test_a_request_in_pieces_of_every_size_is_read_whole(server, tth_bundle, seed):
    """DATA frames cut anywhere by TCP (headers split, a padded frame, an empty last frame): the same scores."""
    rng = random.Random(seed)
    width = tth_bundle.x.shape[1]
    rows = min(len(tth_bundle.x), 60_000 // (4 * width))  # within the stream's first window
    x = np.ascontiguousarray(tth_bundle.x[:rows], dtype=np.float32)
    req = pb.ModelInferRequest(model_name="tth")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    msg = message(req.SerializeToString())
    cuts = sorted(rng.sample(range(1, len(msg)), 2))
    a, b, c = msg[: cuts[0]], msg[cuts[0] : cuts[1]], msg[cuts[1] :]
    pad = rng.randrange(1, 40)
    stream = (
        frame(HEADERS, END_HEADERS, 1, request_headers(hpack.Encoder()))
        + frame(DATA, 0, 1, a)
        + frame(DATA, 0x8, 1, bytes((pad,)) + b + bytes(pad))  # PADDED
        + frame(DATA, 0, 1, c)
        + frame(DATA, END_STREAM, 1)
    )
    s = connect(server)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pos = 0
    while pos < len(stream):
        n = rng.choice((1, 2, 5, 9, 10, 100, 1000, 5000, 20000))
        s.sendall(stream[pos : pos + n])
        pos += n
        if rng.random() < 0.3:
            time.sleep(0.001)  # so the server reads it in many pieces
    body, frames = reply_of(s, 1)
    s.close()
    r = pb.ModelInferResponse.FromString(body)
    y = np.frombuffer(r.raw_output_contents[0], np.float32).reshape(rows, -1)
    np.testing.assert_allclose(y, tth_bundle.oracle.score(x), atol=ATOL)
    assert not any(isinstance(f, (hyperframe.GoAwayFrame, hyperframe.RstStreamFrame)) for f in frames)


def _announce(s: socket.socket, sid: int, length: int, enc) -> None:
    """Open call ``sid`` and send the start of a DATA frame holding its prefix (``length``) only."""
    first = b"\x00" + struct.pack(">I", length) + bytes(95)
    head = frame(DATA, 0, sid, first + bytes(16384 - len(first)))[: 9 + len(first)]  # the frame's start only
    s.sendall(frame(HEADERS, END_HEADERS, sid, request_headers(enc)) + head)


def _frames_soon(s: socket.socket) -> list:
    time.sleep(0.3)
    s.settimeout(5)
    return frames_of(s.recv(1 << 16))


def _grants(frames, sid: int) -> list[int]:
    return [
        f.window_increment
        for f in frames
        if isinstance(f, hyperframe.WindowUpdateFrame) and f.stream_id == sid
    ]


def _widenings(frames) -> list[dict]:
    """The server's SETTINGS that change a first window (its first SETTINGS does not)."""
    wide = hyperframe.SettingsFrame.INITIAL_WINDOW_SIZE
    return [f.settings for f in frames if isinstance(f, hyperframe.SettingsFrame) and wide in f.settings]


def test_the_grant_is_what_the_message_needs_beyond_its_window(server):
    """A message's prefix arrives in the first bytes of a frame, with 40 calls open (too many to
    widen the connection): the stream is granted exactly the rest."""
    length, enc = 200_000, hpack.Encoder()
    s = connect(server)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"".join(frame(HEADERS, END_HEADERS, 2 * i + 3, request_headers(enc)) for i in range(39)))
    _announce(s, 81, length, enc)
    frames = _frames_soon(s)
    s.close()
    assert _widenings(frames) == []
    assert _grants(frames, 81) == [length + 5 - 65535]


@pytest.mark.parametrize(
    ("length", "window", "streams", "grant"),
    [
        (200_000, 4 * 65535, 32, None),  # the widened window holds it: no grant
        (2**20, 16 * 65535, 8, 2**20 + 5 - 16 * 65535),  # the widest window, and the rest granted
    ],
)
def test_a_long_message_widens_its_connection(server, length, window, streams, grant):
    """The first long message: one SETTINGS gives wider first windows and fewer streams, in the
    same bytes as 128 x 64 KiB."""
    s = connect(server)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _announce(s, 1, length, hpack.Encoder())
    frames = _frames_soon(s)
    s.close()
    wide = hyperframe.SettingsFrame
    assert _widenings(frames) == [{wide.MAX_CONCURRENT_STREAMS: streams, wide.INITIAL_WINDOW_SIZE: window}]
    assert streams * window <= 128 * 65535
    assert _grants(frames, 1) == ([] if grant is None else [grant])


def test_a_widened_connection_sends_its_next_messages_whole(server, tth_bundle):
    """After the first long call, the next ones go out whole at once (no grant to wait for), are
    scored exactly, and the bounds still hold: a stream past the new limit is refused, a stream
    past its wider window is reset."""
    width = tth_bundle.x.shape[1]
    rows = 200_000 // (4 * width)
    x = np.ascontiguousarray(np.resize(tth_bundle.x, (rows, width)), dtype=np.float32)
    req = pb.ModelInferRequest(model_name="tth")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    msg = message(req.SerializeToString())
    assert 65535 < len(msg) <= 4 * 65535
    enc = hpack.Encoder()
    s = connect(server)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(sid: int, data: bytes = msg, end: int = END_STREAM) -> bytes:
        frames = [frame(DATA, 0, sid, data[i : i + 16384]) for i in range(0, len(data), 16384)]
        return (
            frame(HEADERS, END_HEADERS, sid, request_headers(enc)) + b"".join(frames) + frame(DATA, end, sid)
        )

    s.sendall(call(1, msg[:65535], 0))  # what the default window lets it send; the rest on the grant
    time.sleep(0.3)
    s.sendall(frame(DATA, END_STREAM, 1, msg[65535:]))
    body, frames = reply_of(s, 1)
    assert _widenings(frames) == [{3: 32, 4: 4 * 65535}]  # MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE
    s.sendall(frame(SETTINGS, 1, 0))  # ACK
    for sid in (3, 5, 7):
        s.sendall(call(sid))  # whole, at once
        body, frames = reply_of(s, sid)
        y = np.frombuffer(pb.ModelInferResponse.FromString(body).raw_output_contents[0], np.float32)
        np.testing.assert_allclose(y.reshape(rows, -1), tth_bundle.oracle.score(x), atol=ATOL)
    assert _grants(frames, 7) == []
    # a message under way: what it takes of its wider window is counted in the server's intake
    assert pending(server) == 0
    s.sendall(call(9, msg[:1000], 0))
    time.sleep(0.3)
    assert pending(server) == len(msg) - 65535
    s.sendall(frame(DATA, END_STREAM, 9, msg[1000:]))
    reply_of(s, 9)
    assert pending(server) == 0
    # 32 calls open at once, whose messages do not come: a 33rd is refused
    s.sendall(b"".join(frame(HEADERS, END_HEADERS, 11 + 2 * i, request_headers(enc)) for i in range(33)))
    frames = _frames_soon(s)
    assert [(f.stream_id, f.error_code) for f in frames if isinstance(f, hyperframe.RstStreamFrame)] == [
        (11 + 2 * 32, REFUSED_STREAM)
    ]
    # one of them sends past its window: a message its window holds exactly, and one byte more
    big = b"\x00" + struct.pack(">I", 4 * 65535 - 5) + bytes(4 * 65535 - 5) + b"!"
    s.sendall(b"".join(frame(DATA, 0, 11, big[i : i + 16384]) for i in range(0, len(big), 16384)))
    frames = _frames_soon(s)
    s.close()
    assert (11, FLOW_CONTROL_ERROR) in [
        (f.stream_id, f.error_code) for f in frames if isinstance(f, hyperframe.RstStreamFrame)
    ]


def test_data_between_headers_and_continuation_is_a_protocol_error(server, tth_bundle):
    """RFC 9113 §6.10: a header block is contiguous; any other frame inside it ends the connection."""
    enc = hpack.Encoder()
    first = request_headers(enc)
    block = request_headers(enc)
    s = connect(server)
    s.sendall(
        frame(HEADERS, END_HEADERS, 1, first)  # stream 1 open, its message to come
        + frame(HEADERS, 0, 3, block[:10])  # stream 3's block begins...
        + frame(DATA, END_STREAM, 1, message(b""))  # ...a DATA frame of stream 1 inside it
        + frame(CONTINUATION, END_HEADERS, 3, block[10:])
    )
    assert goaway(frames_of(read_all(s))) == (1, PROTOCOL_ERROR)
    s.close()
    still_serves(server, tth_bundle)


def test_a_call_under_way_when_the_client_says_goaway_is_answered(server, tth_bundle):
    """RFC 9113 §6.8: GOAWAY ends a connection gracefully; the calls already open finish."""
    x = np.ascontiguousarray(tth_bundle.x[:20], dtype=np.float32)
    req = pb.ModelInferRequest(model_name="tth")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    msg = message(req.SerializeToString())
    s = connect(server)
    s.sendall(frame(HEADERS, END_HEADERS, 1, request_headers(hpack.Encoder())) + frame(DATA, 0, 1, msg[:100]))
    time.sleep(0.1)
    s.sendall(frame(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR)))
    time.sleep(0.1)
    s.sendall(frame(DATA, END_STREAM, 1, msg[100:]))
    frames = frames_of(read_all(s))  # the server closes the connection once the call is answered
    s.close()
    body = b"".join(f.data for f in frames if isinstance(f, hyperframe.DataFrame) and f.stream_id == 1)
    y = np.frombuffer(pb.ModelInferResponse.FromString(body[5:]).raw_output_contents[0], np.float32)
    np.testing.assert_allclose(y.reshape(len(x), -1), tth_bundle.oracle.score(x), atol=ATOL)


def test_widening_while_a_call_waits_for_its_grant_counts_every_byte(server):
    """A call waiting for its grant when the connection is widened: the wider window covers part
    of its message, which it reserves in the intake together with the rest, once both fit (it
    never holds intake bytes while it waits for more); once every call is answered the intake
    holds nothing."""
    enc, big, small = hpack.Encoder(), 2**20, 100_000
    s = connect(server)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data(sid: int, n: int, prefix: int | None = None, end: int = 0) -> bytes:
        body = (b"\x00" + struct.pack(">I", prefix) if prefix is not None else b"") + bytes(n)
        body = body[:n]
        chunks = [body[i : i + 16384] for i in range(0, len(body), 16384)]
        return b"".join(frame(DATA, end if i == len(chunks) - 1 else 0, sid, c) for i, c in enumerate(chunks))

    assert pending(server) == 0
    # 12 calls open (too many for the widest window's 8); three announce 1 MiB: two are granted
    # the rest out of the connection's budget (twice the limit), the third waits
    s.sendall(b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, request_headers(enc)) for i in range(12)))
    s.sendall(b"".join(data(sid, 65535, big) for sid in (1, 3, 5)))
    frames = _frames_soon(s)
    rest = big + 5 - 65535
    assert (_grants(frames, 1), _grants(frames, 3), _grants(frames, 5)) == ([rest], [rest], [])
    assert _widenings(frames) == []
    assert pending(server) == 2 * rest
    # nine are cancelled; a call of 100 kB widens the connection (2 x 64 KiB, 64 calls)
    s.sendall(b"".join(frame(RST_STREAM, 0, 2 * i + 1, struct.pack(">I", CANCEL)) for i in range(3, 12)))
    s.sendall(frame(HEADERS, END_HEADERS, 25, request_headers(enc)) + data(25, 1000, small))
    frames = _frames_soon(s)
    assert _widenings(frames) == [{3: 64, 4: 2 * 65535}]
    # call 25's window holds its message: what it takes beyond 64 KiB is counted at once; call 5
    # may send 64 KiB more, counted with its grant
    assert pending(server) == 2 * rest + (small + 5 - 65535)
    s.sendall(
        data(25, small + 5 - 1000, end=END_STREAM)
        + data(1, rest, end=END_STREAM)
        + data(3, rest, end=END_STREAM)
    )
    s.sendall(data(5, 65535))
    frames = _frames_soon(s)
    assert _grants(frames, 5) == [rest - 65535]  # what is left of its message, once 1 and 3 gave theirs back
    s.sendall(data(5, rest - 65535, end=END_STREAM))
    frames = _frames_soon(s)
    s.close()
    assert pending(server) == 0
    ends = {f.stream_id for f in frames if isinstance(f, hyperframe.HeadersFrame) and "END_STREAM" in f.flags}
    assert 5 in ends


def test_a_connection_that_ran_many_calls_at_once_is_not_widened(server):
    """40 calls were open at once (more than the 32 a widened connection may run): after 39 are
    cancelled, a long message gets a grant and the connection keeps its 128 calls."""
    length, enc = 200_000, hpack.Encoder()
    s = connect(server)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, request_headers(enc)) for i in range(40)))
    s.sendall(b"".join(frame(RST_STREAM, 0, 2 * i + 1, struct.pack(">I", CANCEL)) for i in range(39)))
    _announce(s, 81, length, enc)
    frames = _frames_soon(s)
    s.close()
    assert _widenings(frames) == []
    assert _grants(frames, 81) == [length + 5 - 65535]
