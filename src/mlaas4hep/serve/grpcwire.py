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
  honoured; ours widen the first windows of a connection sending long messages),
  ``PING`` (answered: gRPC clients measure bandwidth with them), ``HEADERS`` +
  ``CONTINUATION``, ``DATA`` (padding stripped; an unpadded frame's payload is
  handed on as it arrives, as views of the reads, and copied once, when the
  message is whole), ``WINDOW_UPDATE``, ``RST_STREAM`` (the call is cancelled),
  ``GOAWAY`` (the calls under way finish, then the connection closes); others
  are ignored;
* header compression with the ``hpack`` package. A client sends the same
  headers on every call, after the first as one-byte references to its
  dynamic table: such a block changes no table, so its decoding is cached by
  its bytes;
* flow control both ways: the server never sends more than the client's
  windows allow, and bounds what a client may send, how many calls it may
  run at once, its headers, the replies it leaves unread and its floods of
  control frames (:mod:`.h2limits`: a connection holds at most about twice
  the message limit of request bytes, granted as :mod:`.h2credit` keeps
  account, within the server's :mod:`.intake` for all connections);
* unary calls only (every RPC of the service but ``ModelStreamInfer``, which
  answers ``UNIMPLEMENTED``, as under grpcio); requests compressed with gzip or
  deflate are read, replies go uncompressed; the message limit is the
  server's body limit (``RESOURCE_EXHAUSTED``), as grpcio's
  ``max_receive_message_length``, decompressed size included; a call's
  ``grpc-timeout`` bounds the servicer's work (``DEADLINE_EXCEEDED``).

A reply's three frames leave in one ``write``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import grpc
import hpack

from .bodytimer import Ticker, stalled_message
from .grpccall import Methods, unary
from .grpcframes import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEAD,
    HEADERS,
    MAX_FRAME,
    OK_TRAILERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    REPLY_HEADERS,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
    trailers,
)
from .h2credit import Credit, Stream
from .h2limits import (
    CLOSE_GRACE,
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    MAX_WINDOW,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Limits,
)
from .intake import Intake

log = logging.getLogger("mlaas4hep.serve")


#: the smallest piece of a DATA frame kept as a view of its read (smaller ones are copied)
VIEW_MIN = 4096


def _head(b: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int, int]:
    """(length, type, flags, stream) of the frame header at ``pos``."""
    return (
        (b[pos] << 16) | (b[pos + 1] << 8) | b[pos + 2],
        b[pos + 3],
        b[pos + 4],
        (HEAD.unpack_from(b, pos + 5)[0] & 0x7FFFFFFF),
    )


class WireProtocol(asyncio.Protocol):
    """One HTTP/2 connection of ``server`` carrying unary gRPC calls to its methods, within its limits."""

    def __init__(self, server: WireServer):
        self.methods, self.max_message, self.conns = server.methods, server.max_message, server.conns
        self.limits = limits = server.limits
        self.counted = server.counted  # told of each call whose message stopped arriving
        self.buf = bytearray()  # a frame's header, or a frame other than unpadded DATA, not yet whole
        self.into = 0  # bytes of a DATA frame's payload still to come (handed on as they come)
        self.into_flags = self.into_sid = 0
        self.into_stream: Stream | None = None  # where they go (None: dropped)
        self.preface = False
        self.streams: dict[int, Stream] = {}
        # Any: hpack's types say bytes, it gives str (compiled code checks the types it is told)
        self.decoder: Any = hpack.Decoder(max_header_list_size=limits.max_header_list)
        self.decoder.max_allowed_table_size = limits.header_table
        self.header_cache: dict[bytes, list[tuple[str, str]]] = {}
        self.pending: tuple[int, int, bytearray] | None = None  # a HEADERS awaiting CONTINUATION
        self.last_stream = 0
        # what the client may send (see .h2credit)
        self.credit = Credit(
            limits, self.max_message, server.intake, self.streams, self._put, self._send, lambda: self.closing
        )
        self.resets = limits.resets  # calls the client may still cancel beyond those answered
        self.control = 0  # PING/SETTINGS/empty DATA frames since the last new stream (within a second)
        self.control_since = 0.0
        # what the client lets us send
        self.send_window = 65535
        self.stream_window = 65535
        self.max_frame = 16384
        self.blocked: dict[int, list[Any]] = {}  # stream -> [data left, trailers]: waiting for window
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.failed = False  # told GOAWAY with an error: what it sends now is dropped
        self.draining = False  # told GOAWAY as the server stops: its calls finish, new ones are refused
        self.peer_goaway = False  # the client said GOAWAY: the same, then the connection closes
        self.out: list[bytes] = []  # replies written together once the loop's ready callbacks ran
        self.timer: asyncio.TimerHandle | None = None
        # checks the incomplete messages (see .bodytimer)
        self.stalls = Ticker(asyncio.get_running_loop(), limits.body_timeout, self._check_stalls)

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
        transport.set_write_buffer_limits(high=self.limits.write_high)
        self.timer = asyncio.get_running_loop().call_later(self.limits.preface_timeout, self._no_preface)
        settings = struct.pack(
            ">HIHIHI", 0x3, self.limits.max_streams, 0x5, MAX_FRAME, 0x6, self.limits.max_header_list
        )
        transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, HEAD.pack(self.credit.window - 65535))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        self.stalls.stop()
        self.credit.close()
        for s in self.streams.values():
            if s.task is not None:
                s.task.cancel()
        self.streams.clear()

    def pause_writing(self) -> None:
        """The client does not read what we write: stop reading its requests until it does."""
        if self.transport is not None and not self.failed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _no_preface(self) -> None:
        if not self.preface:
            self._fail(NO_ERROR, f"no HTTP/2 preface in {self.limits.preface_timeout:g} s")

    def drain(self) -> None:
        """The server stops: GOAWAY now, so the client sends its next calls elsewhere; these finish."""
        if self.transport is not None and not self.closing and not self.draining:
            self.draining = True
            self._send(frame(GOAWAY, 0, 0, HEAD.pack(self.last_stream) + HEAD.pack(NO_ERROR)))

    def close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            out, self.out = self.out, []  # replies already made go first
            if not self.draining:
                out.append(frame(GOAWAY, 0, 0, HEAD.pack(self.last_stream) + HEAD.pack(NO_ERROR)))
            if out and not self.failed:
                self.transport.write(b"".join(out))
            self.transport.close()

    def _fail(self, code: int, why: str) -> None:
        log.debug("gRPC connection closed: %s", why)
        t = self.transport
        if t is not None and not self.failed and not t.is_closing():
            # GOAWAY, then a lingering close (as nginx's): our side ends once GOAWAY is sent, and what
            # the client still sends is read and dropped until it closes too, so its kernel does not
            # discard the GOAWAY on a reset. After CLOSE_GRACE seconds, the connection is dropped.
            self.closing = self.failed = True
            self.buf.clear()
            for sid, s in list(self.streams.items()):
                self._drop(sid, s)
            self.out.clear()
            t.write(frame(GOAWAY, 0, 0, HEAD.pack(self.last_stream) + HEAD.pack(code) + why.encode()[:256]))
            t.write_eof()
            t.resume_reading()
            asyncio.get_running_loop().call_later(CLOSE_GRACE, t.abort)

    def _put(self, data: bytes) -> None:
        """Write ``data`` now (unless the connection failed: nothing follows its GOAWAY)."""
        if not self.failed and self.transport is not None:
            self.transport.write(data)

    def _calm(self, why: str) -> None:
        self._fail(ENHANCE_YOUR_CALM, why)

    # ------------------------------------------------------------ frames in
    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        if not self.preface:
            buf = self.buf
            buf += data
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    self._fail(PROTOCOL_ERROR, "not HTTP/2")
                return
            if buf[: len(PREFACE)] != PREFACE:
                return self._fail(PROTOCOL_ERROR, "not HTTP/2 (a gRPC client, or HTTP/1 on the gRPC port?)")
            data = bytes(buf[len(PREFACE) :])
            buf.clear()
            self.preface = True
            if self.timer is not None:
                self.timer.cancel()
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end and not self.closing:
            if self.into:  # the rest of a DATA frame's payload: handed on as it comes, not buffered
                take = min(self.into, end - pos)
                self._data_piece(view[pos : pos + take], end)
                pos += take
            elif self.buf:
                pos = self._carried(view, pos, end)
            else:
                if end - pos < 9:
                    self.buf += view[pos:end]
                    return
                n, kind, flags, sid = _head(view, pos)
                if self._begin(n, kind, flags, sid):
                    pos += 9
                elif self.closing:
                    return
                elif end - pos < 9 + n:
                    self.buf += view[pos:end]
                    return
                else:
                    payload = bytes(view[pos + 9 : pos + 9 + n])
                    pos += 9 + n
                    self._frame(kind, flags, sid, payload)

    def _carried(self, view: memoryview, pos: int, end: int) -> int:
        """Complete the frame begun in ``buf`` from ``view[pos:end]``; the position after what it took.

        Only a frame's header, and frames other than unpadded DATA, are buffered.
        """
        buf = self.buf
        if len(buf) < 9:
            take = min(9 - len(buf), end - pos)
            buf += view[pos : pos + take]
            pos += take
            if len(buf) < 9:
                return pos
            n, kind, flags, sid = _head(buf, 0)
            if self._begin(n, kind, flags, sid):
                buf.clear()
                return pos
            if self.closing:
                return end
        n, kind, flags, sid = _head(buf, 0)
        take = min(9 + n - len(buf), end - pos)
        buf += view[pos : pos + take]
        pos += take
        if len(buf) == 9 + n:
            payload = bytes(buf[9:])
            buf.clear()
            self._frame(kind, flags, sid, payload)
        return pos

    def _begin(self, n: int, kind: int, flags: int, sid: int) -> bool:
        """A frame's header is read: True when its payload is handed on as it comes (an unpadded
        DATA frame, now begun); False when the frame is to be read whole, or was refused."""
        if n > MAX_FRAME:
            self._fail(FRAME_SIZE_ERROR, f"a frame of {n} bytes")
            return False
        if self.pending is not None and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "a frame between HEADERS and CONTINUATION")
            return False
        if kind == DATA and not flags & PADDED:
            self._data_start(flags, sid, n)
            return True
        return False

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            if self.pending is None or self.pending[0] != sid:
                return self._fail(PROTOCOL_ERROR, "an unexpected CONTINUATION")
            self.pending[2].extend(payload)
            if len(self.pending[2]) > self.limits.max_header_block:
                return self._calm(f"a header block over {self.limits.max_header_block} bytes")
            if flags & END_HEADERS:
                psid, pflags, block = self.pending
                self.pending = None
                self._open(psid, pflags, bytes(block))
        elif kind == SETTINGS:
            if sid != 0:
                return self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & ACK:
                if payload:
                    return self._fail(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
                self.credit.acked()
            elif len(payload) % 6:
                return self._fail(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
            elif self._flood("SETTINGS"):
                self._settings(payload)
        elif kind == PING:
            if sid != 0 or len(payload) != 8:
                return self._fail(FRAME_SIZE_ERROR if sid == 0 else PROTOCOL_ERROR, "a bad PING")
            if not flags & ACK and self._flood("PING"):
                self._put(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == RST_STREAM:
            if sid == 0 or len(payload) != 4:
                return self._fail(PROTOCOL_ERROR if sid == 0 else FRAME_SIZE_ERROR, "a bad RST_STREAM")
            if sid > self.last_stream:
                return self._fail(PROTOCOL_ERROR, f"RST_STREAM of idle stream {sid}")
            s = self.streams.get(sid)
            if s is not None:
                self._drop(sid, s)
                self.resets -= 1
                if self.resets < 0:
                    self._calm("too many calls cancelled (rapid reset)")
        elif kind == GOAWAY:  # the client ends the connection: its calls finish, then it closes
            self.peer_goaway = True
            if not self.streams:
                self._write()  # what is answered leaves, then the connection closes
        # PRIORITY, PUSH_PROMISE (never from a client) and unknown frames: ignored

    def _flood(self, what: str) -> bool:
        """Count a frame that costs us work but opens no call; False (and GOAWAY) past the limit.

        The count starts again with every new call and every second: an idle client's
        keep-alive PINGs are no flood.
        """
        now = time.monotonic()
        if now - self.control_since > 1.0:
            self.control, self.control_since = 0, now
        self.control += 1
        if self.control > self.limits.control:
            self._calm(
                f"more than {self.limits.control} {what}/SETTINGS/PING/empty DATA frames without a call"
            )
            return False
        return True

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            return self._fail(FRAME_SIZE_ERROR, "a WINDOW_UPDATE not of 4 bytes")
        inc = HEAD.unpack_from(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if inc == 0 or self.send_window + inc > MAX_WINDOW:
                return self._fail(PROTOCOL_ERROR if inc == 0 else FLOW_CONTROL_ERROR, "a bad WINDOW_UPDATE")
            self.send_window += inc
        elif sid > self.last_stream:
            return self._fail(PROTOCOL_ERROR, f"WINDOW_UPDATE of idle stream {sid}")
        elif sid in self.streams:
            s = self.streams[sid]
            if inc == 0 or s.window + inc > MAX_WINDOW:
                self._reset(sid, PROTOCOL_ERROR if inc == 0 else FLOW_CONTROL_ERROR)
                return
            s.window += inc
        if self.blocked:
            self._flush()

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == 0x4:
                if value > MAX_WINDOW:
                    return self._fail(FLOW_CONTROL_ERROR, "initial window too large")
                delta, self.stream_window = value - self.stream_window, value
                for s in self.streams.values():
                    s.window += delta
            elif key == 0x5:
                if not 16384 <= value <= 16777215:
                    return self._fail(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.max_frame = min(value, MAX_FRAME)
        self._put(frame(SETTINGS, ACK, 0))
        if self.blocked:
            self._flush()

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            return self._fail(PROTOCOL_ERROR, "HEADERS on stream 0")
        i, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                return self._fail(PROTOCOL_ERROR, "bad padding")
            i, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            i += 5
        if i > end:
            return self._fail(PROTOCOL_ERROR, "bad padding")
        if end - i > self.limits.max_header_block:
            return self._calm(f"a header block over {self.limits.max_header_block} bytes")
        if flags & END_HEADERS:
            self._open(sid, flags, payload[i:end])
        else:
            self.pending = (sid, flags, bytearray(payload[i:end]))

    def _decode(self, block: bytes) -> list[tuple[str, str]] | None:
        headers = self.header_cache.get(block)
        if headers is not None:
            return headers
        try:
            headers = [(str(k), str(v)) for k, v in self.decoder.decode(block)]
        except hpack.OversizedHeaderListError:
            self._calm(f"a header list over {self.limits.max_header_list} bytes")
            return None
        except hpack.HPACKError as err:
            self._fail(COMPRESSION_ERROR, f"header block: {err}")
            return None
        # a block of indexed fields only (every byte's top bit set, 1-byte indices) left the
        # table as it was: its next occurrence decodes to the same headers
        if all(b & 0x80 and b != 0xFF for b in block):
            if len(self.header_cache) > 64:
                self.header_cache.clear()
            self.header_cache[block] = headers
        else:
            self.header_cache.clear()  # the table moved: cached blocks may now mean other headers
        return headers

    def _open(self, sid: int, flags: int, block: bytes) -> None:
        trailing = sid in self.streams
        if not trailing and (sid % 2 == 0 or sid <= self.last_stream):
            return self._fail(PROTOCOL_ERROR, f"stream {sid} opened out of order")
        headers = self._decode(block)  # always: the block may change the HPACK table
        if headers is None or self.closing:
            return
        if trailing:  # trailers from a client (gRPC clients send none on unary calls): ignored
            if self._flood("trailing HEADERS"):
                s = self.streams.get(sid)
                if s is not None and s.task is None and flags & END_STREAM:
                    self._dispatch(sid, s)
            return
        if self.draining or self.peer_goaway:  # after a GOAWAY: a call the client may send elsewhere
            self._put(frame(RST_STREAM, 0, sid, HEAD.pack(REFUSED_STREAM)))
            return
        self.last_stream = sid
        self.control = 0
        credit = self.credit
        if len(self.streams) >= credit.max_streams:
            self._put(frame(RST_STREAM, 0, sid, HEAD.pack(REFUSED_STREAM)))
            if credit.grace > 0:  # opened before the client read our lower limit (Credit.widen)
                credit.grace -= 1
                return
            self.resets -= 1  # a refused stream cost a decoding: counted as a cancelled call
            if self.resets < 0:
                self._calm("too many streams refused")
            return
        s = Stream(credit, headers, self.stream_window)
        self.streams[sid] = s
        credit.peak = max(credit.peak, len(self.streams))
        if flags & END_STREAM:
            self._dispatch(sid, s)
        else:  # its message is to come: watched until it has
            self.stalls.start()

    def _check_stalls(self) -> bool:
        """End the calls whose message stopped arriving (as a refused prefix); True: some still incomplete."""
        if self.closing:
            return False
        why = stalled_message(self.limits.body_timeout)
        for sid in self.credit.stalled():
            self._reply(sid, grpc.StatusCode.DEADLINE_EXCEEDED.value[0], why, b"")
            self._send(frame(RST_STREAM, 0, sid, HEAD.pack(NO_ERROR)))
            self.counted()
        return any(s.task is None for s in self.streams.values())

    def _data_start(self, flags: int, sid: int, n: int) -> None:
        """A DATA frame of ``n`` bytes begins: count them now; its payload follows (:meth:`_data_piece`)."""
        self.into, self.into_flags, self.into_sid = n, flags, sid
        self.into_stream = self._data_head(flags, sid, n)
        if n == 0:
            self._data_end()

    def _data_piece(self, piece: memoryview, read: int) -> None:
        """The next ``piece`` of the DATA frame's payload, out of a read of ``read`` bytes."""
        self.into -= len(piece)
        s = self.into_stream
        if s is not None and self.streams.get(self.into_sid) is s and s.task is None:
            # a view pins the read it is of: kept only when it is large and most of that read, so
            # a connection holds about the bytes flow control counts (h2credit); small pieces are
            # gathered into one buffer, not kept as objects of a few bytes each
            gather = len(piece) < VIEW_MIN or 4 * len(piece) < 3 * read
            if not self._append(self.into_sid, s, piece, gather):
                self.into_stream = None
        if self.into == 0:
            self._data_end()

    def _data_end(self) -> None:
        s, self.into_stream = self.into_stream, None
        sid = self.into_sid
        if s is not None and self.into_flags & END_STREAM and self.streams.get(sid) is s and s.task is None:
            self._dispatch(sid, s)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        """A padded DATA frame, whole (others are handed on as they come)."""
        n = len(payload)
        s = self._data_head(flags, sid, n)
        if s is None:
            return
        if not payload or payload[0] >= n:
            return self._fail(PROTOCOL_ERROR, "bad padding")
        if self._append(sid, s, payload[1 : n - payload[0]]) and flags & END_STREAM:
            self._dispatch(sid, s)

    def _data_head(self, flags: int, sid: int, n: int) -> Stream | None:
        """Count a DATA frame of ``n`` bytes (flow control); the stream its payload goes to, if any."""
        if sid == 0 or sid > self.last_stream:
            self._fail(PROTOCOL_ERROR, f"DATA on {'stream 0' if sid == 0 else f'idle stream {sid}'}")
            return None
        if not self.credit.received(n):
            self._fail(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
            return None
        if n == 0 and not flags & END_STREAM and not self._flood("empty DATA"):
            return None
        s = self.streams.get(sid)
        if s is None or s.task is not None:
            self.credit.give_window(n)  # a cancelled or finished stream: only the window counts
            return None
        if s.received + n > s.need:
            self.credit.give_window(n)  # the stream's own bytes go back as it is reset
            self._reset(sid, FLOW_CONTROL_ERROR)
            return None
        s.received += n
        return s

    def _append(self, sid: int, s: Stream, piece: bytes | memoryview, gather: bool = False) -> bool:
        """Add ``piece`` to stream ``sid``'s message (``gather``: copied into the buffer of small
        pieces at its end); False: the message was refused (too large)."""
        before = s.size
        s.size += len(piece)
        last = s.body[-1] if gather and s.body else None
        if isinstance(last, bytearray):
            last += piece
        else:
            s.body.append(bytearray(piece) if gather else piece)
        return not (before < 5 <= s.size) or self._prefix(sid, s)

    def _prefix(self, sid: int, s: Stream) -> bool:
        """The message's length is known: refuse it, or grant its stream the window it needs."""
        head = s.body[0] if len(s.body[0]) >= 5 else b"".join(s.body)[:5]
        length = int.from_bytes(head[1:5], "big")
        if length > self.max_message:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            self._reply(sid, code, f"Received message larger than max ({length} vs. {self.max_message})", b"")
            if self.transport is not None:  # stop sending: the answer is given (gRPC over HTTP/2)
                self._send(frame(RST_STREAM, 0, sid, HEAD.pack(NO_ERROR)))
            return False
        self.credit.widen(length + 5)  # its next messages of this size: sent without a grant
        # what the rest needs beyond its window (the rest of a frame under way is counted in received)
        extra = (length + 5 - s.size - self.into) - (s.need - s.received)
        self.credit.reserve(sid, s, length + 5, extra)
        return True

    def _reset(self, sid: int, code: int) -> None:
        """A stream error: RST_STREAM; it counts as a cancelled call (a client that makes many is cut off)."""
        s = self.streams.get(sid)
        if s is not None:
            self._drop(sid, s)
        self._put(frame(RST_STREAM, 0, sid, HEAD.pack(code)))
        self.resets -= 1
        if self.resets < 0:
            self._calm("too many streams reset")

    def _drop(self, sid: int, s: Stream) -> None:
        """Forget stream ``sid``: cancel its call, give its bytes and its grant back."""
        if s.task is not None and not s.task.done():
            s.task.cancel()
        self.blocked.pop(sid, None)
        self._release(sid, s)

    def _release(self, sid: int, s: Stream) -> None:
        if self.streams.pop(sid, None) is not None:
            self.credit.release(sid, s)

    # ------------------------------------------------------------ calls
    def _dispatch(self, sid: int, s: Stream) -> None:
        self.credit.forget(sid)
        s.task = asyncio.get_running_loop().create_task(self._call(sid, s))

    async def _call(self, sid: int, s: Stream) -> None:
        one = s.body[0] if len(s.body) == 1 else None
        body = one if isinstance(one, (bytes, memoryview)) else b"".join(s.body)
        s.body = []
        try:
            code, message, reply = await unary(self.methods, s.headers, body, self.max_message, s.hold)
        except asyncio.CancelledError:
            return
        except Exception as err:  # a bug of ours: log it, tell the client, keep serving
            log.exception("internal error in gRPC call %s", sid, exc_info=err)
            code, message = grpc.StatusCode.INTERNAL.value[0], f"internal server error: {type(err).__name__}"
            reply = b""
        self._reply(sid, code, message, reply)

    # ------------------------------------------------------------ frames out
    def _send(self, data: bytes) -> None:
        """Write ``data`` now when it is the connection's only call, else with the others of this turn.

        Replies finished in one turn of the loop then leave in one write (one system call),
        and a lone call's reply does not wait a turn.
        """
        if not self.out:
            if self.failed:
                return
            if len(self.streams) <= 1 and self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)
                return
            asyncio.get_running_loop().call_soon(self._write)
        self.out.append(data)

    def _write(self) -> None:
        out, self.out = self.out, []
        if out and self.transport is not None and not self.transport.is_closing() and not self.failed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if (self.closing or self.peer_goaway) and not self.streams and self.transport is not None:
            self.transport.close()

    def _reply(self, sid: int, code: int, message: str, reply: bytes) -> None:
        s = self.streams.get(sid)
        if s is None or self.transport is None or self.transport.is_closing() or self.failed:
            if s is not None:
                self._release(sid, s)
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
        s = self.streams.get(sid)
        if s is not None:
            self._release(sid, s)
            self.resets = min(self.resets + 1, self.limits.resets)  # an answered call earns a cancel back
        if (
            (self.closing or self.peer_goaway)
            and not self.streams
            and not self.out
            and self.transport is not None
        ):
            self.transport.close()  # the client said GOAWAY: its last call is answered


class WireServer:
    """Unary gRPC calls of ``service`` on ``host:port``, on the running loop (see the module's text)."""

    def __init__(
        self,
        service: Any,
        max_message: int,
        limits: Limits | None = None,
        intake: Intake | None = None,
        counted: Callable[[], None] | None = None,
    ):
        self.methods = Methods(service)
        self.max_message = int(max_message)
        self.limits = limits or Limits()
        self.intake = intake or Intake(MAX_WINDOW)  # without a server's: bounded by each connection alone
        self.counted = counted or (lambda: None)  # told of each call whose message stopped arriving
        self.conns: set[WireProtocol] = set()
        self.servers: list[asyncio.base_events.Server] = []

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen; returns the port (the one chosen when ``port`` is 0)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: WireProtocol(self),
            host.strip("[]"),
            port,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        self.servers.append(server)
        sockets = getattr(server, "sockets")  # a list under uvloop, where typeshed says a tuple  # noqa: B009
        return int(sockets[0].getsockname()[1])

    async def stop(self, grace: float = 1.0) -> None:
        servers, self.servers = self.servers, []
        for server in servers:
            server.close()
        for c in list(self.conns):
            c.drain()
        deadline = asyncio.get_running_loop().time() + grace
        while any(c.streams for c in self.conns) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for c in list(self.conns):
            c.close()
        for server in servers:
            await server.wait_closed()
