"""gRPC spoken directly on the event loop: HTTP/2 frames in, the same servicer, HTTP/2 frames out.

grpcio costs 190-370 µs of server CPU per call before any work of ours
(``bench/RESULTS-grpc-floor.md``): its C core runs the call on a poller
thread, hands it to the event loop, builds a Python context and metadata
objects, and does it all again for the reply. Triton's unary calls need far
less. gRPC itself is small: a unary call is an HTTP/2 ``HEADERS`` frame
(``:path /inference.GRPCInferenceService/ModelInfer``), a ``DATA`` frame
holding a 5-byte prefix and the protobuf message, and the reply is a
``HEADERS`` frame, a ``DATA`` frame and a trailing ``HEADERS`` frame carrying
``grpc-status``. :class:`WireServer` speaks exactly that, as an
:class:`asyncio.Protocol` on the server's own loop (the one uvicorn runs), and
calls the same :class:`~mlaas4hep.serve.grpc_server.InferenceService` as
grpcio does, so every RPC, check and error is the servicer's. A gRPC request
and an HTTP request for one model still meet in one dynamic batcher.

What it implements of HTTP/2 (RFC 9113), cleartext with prior knowledge (what
gRPC clients do without TLS; TLS stays with grpcio):

* frames: ``SETTINGS`` (acknowledged; the client's window and frame size are
  honoured), ``PING`` (answered: gRPC clients measure bandwidth with them),
  ``HEADERS`` + ``CONTINUATION``, ``DATA`` (padding stripped), ``WINDOW_UPDATE``,
  ``RST_STREAM`` (the call is cancelled), ``GOAWAY``; others are ignored;
* header compression with the ``hpack`` package. A client sends the same
  headers on every call, after the first as one-byte references to its
  dynamic table: such a block changes no table, so its decoding is cached by
  its bytes;
* flow control: the server opens large windows once (a request never waits
  for a ``WINDOW_UPDATE``; the connection's window is topped up as it is
  used) and never sends more than the client's windows allow;
* unary calls only (every RPC of the service but ``ModelStreamInfer``, which
  answers ``UNIMPLEMENTED``, as under grpcio); requests compressed with gzip or
  deflate are read, replies go uncompressed; the message limit is the
  server's body limit (``RESOURCE_EXHAUSTED``), as grpcio's
  ``max_receive_message_length``, decompressed size included.

A reply's three frames leave in one ``write``. ``grpc-timeout`` is not
enforced (the data plane has its own time limits).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import zlib
from collections.abc import Callable
from typing import Any

import grpc
import hpack
from google.protobuf.message import DecodeError

from ._proto import grpc_service_pb2 as pb

log = logging.getLogger("mlaas4hep.serve")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
#: our receive windows: a stream's is as large as HTTP/2 allows, the connection's is topped up
WINDOW = (1 << 31) - 1
#: frames larger than this are a protocol error (we announce it in our SETTINGS)
MAX_FRAME = 1 << 20
MAX_STREAMS = 1024
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR = 1, 3, 6, 7, 9

_HEAD = struct.Struct(">I")
#: ``:status: 200`` (static table index 8), ``content-type: application/grpc`` as a literal
#: without indexing (name: static index 31): constant bytes, whatever the client's table holds
REPLY_HEADERS = b"\x88\x0f\x10\x10application/grpc"

SERVICE = "/inference.GRPCInferenceService/"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags)) + _HEAD.pack(stream) + payload


def _int(value: int, prefix: int, first: int = 0) -> bytes:
    """An HPACK integer with a ``prefix``-bit prefix (RFC 7541 §5.1); ``first``: the prefix's high bits."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes((first | value,))
    out, value = bytearray((first | top,)), value - top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal without indexing, new name (constant bytes, no table state)."""
    return b"\x00" + _int(len(name), 7) + name + _int(len(value), 7) + value


def _percent(text: str) -> bytes:
    """``grpc-message``'s percent-encoding of UTF-8 (gRPC over HTTP/2)."""
    out = bytearray()
    for b in text.encode("utf-8"):
        out += b"%%%02X" % b if b < 0x20 or b > 0x7E or b == 0x25 else bytes((b,))
    return bytes(out)


def trailers(code: int, message: str = "") -> bytes:
    """The header block of a call's end: ``grpc-status`` and, for an error, ``grpc-message``."""
    block = _literal(b"grpc-status", str(code).encode())
    if message:
        block += _literal(b"grpc-message", _percent(message))
    return block


OK_TRAILERS = trailers(0)


class Context:
    """What the servicer uses of ``grpc.aio.ServicerContext``: the metadata and ``abort``.

    ``abort`` raises grpcio's own ``AbortError`` (the servicer lets it through) and keeps
    the status here for the reply.
    """

    __slots__ = ("_headers", "code", "details")

    def __init__(self, headers: list[tuple[str, str]]):
        self._headers = headers
        self.code, self.details = grpc.StatusCode.UNKNOWN, ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in self._headers if not k.startswith(":"))

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError(details)


class _Stream:
    __slots__ = ("body", "headers", "size", "task", "window")

    def __init__(self, headers: list[tuple[str, str]], window: int):
        self.headers, self.window = headers, window
        self.body: list[bytes] = []
        self.size = 0
        self.task: asyncio.Task[None] | None = None


class Methods:
    """``:path`` -> (request message class, the servicer's coroutine) for the service's unary RPCs."""

    def __init__(self, service: Any):
        self.table: dict[str, tuple[Any, Callable[..., Any]]] = {}
        desc = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        base = type(service).__mro__
        for m in desc.methods:
            if m.client_streaming or m.server_streaming:
                continue
            # only what the servicer itself overrides: the generated base answers UNIMPLEMENTED
            owner = next((c for c in base if m.name in c.__dict__), None)
            if owner is None or owner.__module__.endswith("_pb2_grpc"):
                continue
            self.table[SERVICE + m.name] = (getattr(pb, m.input_type.name), getattr(service, m.name))


class WireProtocol(asyncio.Protocol):
    """One HTTP/2 connection carrying unary gRPC calls to :class:`Methods`."""

    def __init__(self, methods: Methods, max_message: int, conns: set[WireProtocol]):
        self.methods, self.max_message, self.conns = methods, max_message, conns
        self.buf = bytearray()
        self.preface = False
        self.streams: dict[int, _Stream] = {}
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 65536
        self.header_cache: dict[bytes, list[tuple[str, str]]] = {}
        self.pending: tuple[int, int, bytearray] | None = None  # a HEADERS awaiting CONTINUATION
        self.last_stream = 0
        self.consumed = 0  # received DATA bytes not yet returned to the connection's window
        # what the client lets us send
        self.send_window = 65535
        self.stream_window = 65535
        self.max_frame = 16384
        self.blocked: dict[int, list[Any]] = {}  # stream -> [data left, trailers]: waiting for window
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.out: list[bytes] = []  # replies written together once the loop's ready callbacks ran

    # ------------------------------------------------------------ connection
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conns.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        settings = struct.pack(">HIHIHI", 0x3, MAX_STREAMS, 0x4, WINDOW, 0x5, MAX_FRAME)
        transport.write(
            frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, _HEAD.pack(WINDOW - 65535))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        self.closing = True
        for s in self.streams.values():
            if s.task is not None:
                s.task.cancel()
        self.streams.clear()

    def close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            out, self.out = self.out, []  # replies already made go first
            self.transport.write(
                b"".join([*out, frame(GOAWAY, 0, 0, _HEAD.pack(self.last_stream) + _HEAD.pack(0))])
            )
            self.transport.close()

    def _fail(self, code: int, why: str) -> None:
        log.debug("gRPC connection closed: %s", why)
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.write(frame(GOAWAY, 0, 0, _HEAD.pack(self.last_stream) + _HEAD.pack(code)))
            self.transport.close()

    # ------------------------------------------------------------ frames in
    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    self._fail(PROTOCOL_ERROR, "not HTTP/2")
                return
            if buf[: len(PREFACE)] != PREFACE:
                return self._fail(PROTOCOL_ERROR, "not HTTP/2 (a gRPC client, or HTTP/1 on the gRPC port?)")
            del buf[: len(PREFACE)]
            self.preface = True
        pos, end = 0, len(buf)
        while end - pos >= 9 and not self.closing:
            n = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if n > MAX_FRAME:
                return self._fail(FRAME_SIZE_ERROR, f"a frame of {n} bytes")
            if end - pos < 9 + n:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            sid = _HEAD.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
            payload = bytes(buf[pos + 9 : pos + 9 + n])
            pos += 9 + n
            self._frame(kind, flags, sid, payload)
        del buf[:pos]
        if self.consumed > WINDOW // 2 and self.transport is not None and not self.closing:
            self.transport.write(frame(WINDOW_UPDATE, 0, 0, _HEAD.pack(self.consumed)))
            self.consumed = 0

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.pending is not None and kind != CONTINUATION:
            return self._fail(PROTOCOL_ERROR, "a frame between HEADERS and CONTINUATION")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            if self.pending is None or self.pending[0] != sid:
                return self._fail(PROTOCOL_ERROR, "an unexpected CONTINUATION")
            self.pending[2].extend(payload)
            if flags & END_HEADERS:
                psid, pflags, block = self.pending
                self.pending = None
                self._open(psid, pflags, bytes(block))
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == PING:
            if not flags & ACK and self.transport is not None:
                self.transport.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            inc = _HEAD.unpack_from(payload)[0] & 0x7FFFFFFF if len(payload) == 4 else 0
            if sid == 0:
                self.send_window += inc
            elif sid in self.streams:
                self.streams[sid].window += inc
            if self.blocked:
                self._flush()
        elif kind == RST_STREAM:
            s = self.streams.pop(sid, None)
            self.blocked.pop(sid, None)
            if s is not None and s.task is not None:
                s.task.cancel()
        elif kind == GOAWAY:
            self.closing = True
            if not self.streams and self.transport is not None:
                self.transport.close()
        # PRIORITY, PUSH_PROMISE (never from a client) and unknown frames: ignored

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == 0x4:
                if value > WINDOW:
                    return self._fail(FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.stream_window = value - self.stream_window, value
                for s in self.streams.values():
                    s.window += delta
            elif key == 0x5:
                self.max_frame = max(16384, min(value, MAX_FRAME))
        if self.transport is not None:
            self.transport.write(frame(SETTINGS, ACK, 0))
        if self.blocked:
            self._flush()

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        i, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                return self._fail(PROTOCOL_ERROR, "bad padding")
            i, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            i += 5
        if i > end:
            return self._fail(PROTOCOL_ERROR, "bad padding")
        if sid in self.streams:  # trailers from a client: gRPC clients send none on unary calls
            return
        if flags & END_HEADERS:
            self._open(sid, flags, payload[i:end])
        else:
            self.pending = (sid, flags, bytearray(payload[i:end]))

    def _open(self, sid: int, flags: int, block: bytes) -> None:
        if sid % 2 == 0 or sid <= self.last_stream:
            return self._fail(PROTOCOL_ERROR, f"stream {sid} opened out of order")
        self.last_stream = sid
        headers = self.header_cache.get(block)
        if headers is None:
            try:
                headers = [(str(k), str(v)) for k, v in self.decoder.decode(block)]
            except hpack.HPACKError as err:
                return self._fail(COMPRESSION_ERROR, f"header block: {err}")
            # a block of indexed fields only (every byte's top bit set, 1-byte indices) left the
            # table as it was: its next occurrence decodes to the same headers
            if all(b & 0x80 and b != 0xFF for b in block):
                if len(self.header_cache) > 64:
                    self.header_cache.clear()
                self.header_cache[block] = headers
            else:
                self.header_cache.clear()  # the table moved: cached blocks may now mean other headers
        if self.closing:
            return
        if len(self.streams) >= MAX_STREAMS:
            if self.transport is not None:
                self.transport.write(frame(RST_STREAM, 0, sid, _HEAD.pack(REFUSED_STREAM)))
            return
        s = _Stream(headers, self.stream_window)
        self.streams[sid] = s
        if flags & END_STREAM:
            self._dispatch(sid, s)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        self.consumed += len(payload)
        s = self.streams.get(sid)
        if s is None or s.task is not None:
            return  # a cancelled or finished stream: only the window counts
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                return self._fail(PROTOCOL_ERROR, "bad padding")
            payload = payload[1 : len(payload) - payload[0]]
        s.size += len(payload)
        if s.size <= self.max_message + 5:
            s.body.append(payload)
        if flags & END_STREAM:
            self._dispatch(sid, s)

    # ------------------------------------------------------------ calls
    def _dispatch(self, sid: int, s: _Stream) -> None:
        s.task = asyncio.get_running_loop().create_task(self._call(sid, s))

    async def _call(self, sid: int, s: _Stream) -> None:
        code, message, reply = 0, "", b""
        try:
            path = next((v for k, v in s.headers if k == ":path"), "")
            method = self.methods.table.get(path)
            if method is None:
                code, message = grpc.StatusCode.UNIMPLEMENTED.value[0], f"Method not found: {path}"
            elif s.size > self.max_message + 5:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                message = f"Received message larger than max ({s.size - 5} vs. {self.max_message})"
            else:
                body = s.body[0] if len(s.body) == 1 else b"".join(s.body)
                if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
                    code, message = grpc.StatusCode.INTERNAL.value[0], "the request is not one gRPC message"
                else:
                    cls, fn = method
                    data = body[5:]
                    if body[0]:
                        data, code, message = self._inflate(s, data)
                    try:
                        request = cls.FromString(data) if code == 0 else None
                    except (DecodeError, RecursionError):
                        request = None  # grpcio answers UNKNOWN here (and logs an error): the client's doing
                        code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                        message = f"the request is not a valid {cls.DESCRIPTOR.full_name}"
                    if request is not None:
                        ctx = Context(s.headers)
                        try:
                            out = await fn(request, ctx)
                        except grpc.aio.AbortError:
                            code, message = ctx.code.value[0], ctx.details
                        else:
                            reply = out.SerializeToString()
        except asyncio.CancelledError:
            return
        except Exception as err:  # a bug of ours: log it, tell the client, keep serving
            log.exception("internal error in gRPC call %s", sid, exc_info=err)
            code, message = grpc.StatusCode.INTERNAL.value[0], f"internal server error: {type(err).__name__}"
        self._reply(sid, code, message, reply)

    def _inflate(self, s: _Stream, data: bytes) -> tuple[bytes, int, str]:
        """A compressed message's bytes (gzip or deflate, as ``grpc-encoding`` says), within the limit."""
        enc = next((v for k, v in s.headers if k == "grpc-encoding"), "identity")
        if enc not in ("gzip", "deflate"):
            return b"", grpc.StatusCode.UNIMPLEMENTED.value[0], f"grpc-encoding {enc!r} is not served"
        z = zlib.decompressobj(zlib.MAX_WBITS | 16 if enc == "gzip" else zlib.MAX_WBITS)
        try:
            out = z.decompress(data, self.max_message + 1)
        except zlib.error as err:
            return b"", grpc.StatusCode.INTERNAL.value[0], f"cannot decompress the message: {err}"
        if len(out) > self.max_message:
            msg = f"Received message larger than max (more than {self.max_message} bytes decompressed)"
            return b"", grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], msg
        return out, 0, ""

    # ------------------------------------------------------------ frames out
    def _send(self, data: bytes) -> None:
        """Write ``data`` now when it is the connection's only call, else with the others of this turn.

        Replies finished in one turn of the loop then leave in one write (one system call),
        and a lone call's reply does not wait a turn.
        """
        if not self.out:
            if len(self.streams) <= 1 and self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)
                return
            asyncio.get_running_loop().call_soon(self._write)
        self.out.append(data)

    def _write(self) -> None:
        out, self.out = self.out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.closing and not self.streams and self.transport is not None:
            self.transport.close()

    def _reply(self, sid: int, code: int, message: str, reply: bytes) -> None:
        s = self.streams.get(sid)
        if s is None or self.transport is None or self.transport.is_closing():
            self.streams.pop(sid, None)
            return
        tail = frame(
            HEADERS, END_HEADERS | END_STREAM, sid, OK_TRAILERS if code == 0 else trailers(code, message)
        )
        if code != 0:  # trailers-only: one HEADERS frame
            block = REPLY_HEADERS + (OK_TRAILERS if code == 0 else trailers(code, message))
            self._send(frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
            self._done(sid)
            return
        data = len(reply).to_bytes(5, "big") + reply
        head = frame(HEADERS, END_HEADERS, sid, REPLY_HEADERS)
        if len(data) <= min(self.send_window, s.window, self.max_frame) and sid not in self.blocked:
            self.send_window -= len(data)
            s.window -= len(data)
            self._send(head + frame(DATA, 0, sid, data) + tail)
            self._done(sid)
            return
        self._send(head)
        self.blocked[sid] = [memoryview(data), tail]
        self._flush()

    def _flush(self) -> None:
        """Send what the windows allow of the replies waiting for them."""
        if self.transport is None:
            return
        for sid in list(self.blocked):
            s = self.streams.get(sid)
            if s is None:
                del self.blocked[sid]
                continue
            data, tail = self.blocked[sid]
            out = bytearray()
            while data and min(self.send_window, s.window) > 0:
                k = min(len(data), self.send_window, s.window, self.max_frame)
                out += frame(DATA, 0, sid, bytes(data[:k]))
                data = data[k:]
                self.send_window -= k
                s.window -= k
            if not data:
                out += tail
                del self.blocked[sid]
            else:
                self.blocked[sid][0] = data
            if out:
                self._send(bytes(out))
            if not data:
                self._done(sid)

    def _done(self, sid: int) -> None:
        self.streams.pop(sid, None)
        if self.closing and not self.streams and not self.out and self.transport is not None:
            self.transport.close()  # the client said GOAWAY: its last call is answered


class WireServer:
    """Unary gRPC calls of ``service`` on ``host:port``, on the running loop (see the module's text)."""

    def __init__(self, service: Any, max_message: int):
        self.methods = Methods(service)
        self.max_message = int(max_message)
        self.conns: set[WireProtocol] = set()
        self.servers: list[asyncio.base_events.Server] = []

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen; returns the port (the one chosen when ``port`` is 0)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: WireProtocol(self.methods, self.max_message, self.conns),
            host.strip("[]"),
            port,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def stop(self, grace: float = 1.0) -> None:
        servers, self.servers = self.servers, []
        for server in servers:
            server.close()
        deadline = asyncio.get_running_loop().time() + grace
        while any(c.streams for c in self.conns) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for c in list(self.conns):
            c.close()
        for server in servers:
            await server.wait_closed()
