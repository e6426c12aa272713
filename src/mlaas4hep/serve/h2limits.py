"""What one HTTP/2 connection of the wire gRPC front end (:mod:`.grpcwire`) may cost the server.

An HTTP/2 server holds what its clients send until it has used it, and what it
answers until the client reads it; a client chooses how much of both there is
unless the server bounds it. :class:`Limits` holds the bounds, the way nginx,
Envoy and grpc-go bound theirs:

* **request bytes** — a stream may first send the HTTP/2 default window
  (65,535 bytes, enough for most calls). When its gRPC message's 5-byte prefix
  says it is longer, the stream is granted the rest (``WINDOW_UPDATE``) out of
  the connection's *budget*, twice the server's message limit (``--max-body-mb``);
  a stream that does not fit waits until calls finish and give their grant back.
  That grant costs the client a round trip per message; so a connection whose
  messages are longer is *widened* (:meth:`Limits.widened`): one ``SETTINGS``
  frame gives its streams a first window that holds such a message (up to 16
  times the default, about 1 MiB) and lets it open proportionally fewer
  streams at once, so that every stream's first window together stays the
  same 128 x 64 KiB (only a connection that never had more calls open at once
  than that). Its next messages of that size are sent without waiting;
  The connection's window is that budget plus every stream's first window, and
  is refilled only as calls finish, so a connection never holds more request
  bytes than that (partial bodies and the messages the servicer still works
  on). A message longer than the limit is refused at its prefix
  (``RESOURCE_EXHAUSTED``), before its bytes are sent; a compressed message
  takes its decompressed size from the budget while its call runs (a call
  that does not fit is answered ``RESOURCE_EXHAUSTED``: a few kB of gzip
  can be a whole message). A grant is also taken from the server's
  :mod:`.intake`, which bounds the request bytes of all connections together;
* **streams** — :attr:`Limits.max_streams` at once (``SETTINGS_MAX_CONCURRENT_STREAMS``;
  more: ``RST_STREAM REFUSED_STREAM``, which gRPC clients retry), fewer on a widened
  connection;
* **headers** — a header block (``HEADERS`` and its ``CONTINUATION`` frames) of
  :attr:`Limits.max_header_block` bytes, :attr:`Limits.max_header_list`
  decoded (``SETTINGS_MAX_HEADER_LIST_SIZE``, grpc's own 16 KiB), a 4 KiB
  HPACK table (the protocol's default; larger: ``COMPRESSION_ERROR``);
* **replies** — when the connection's unsent output passes
  :attr:`Limits.write_high` (a client that does not read), the server stops
  reading that connection until it drains;
* **floods** — a client that cancels (or makes the server reset or refuse)
  :attr:`Limits.resets` more calls than it let finish (CVE-2023-44487, "rapid
  reset"), or sends :attr:`Limits.control`
  ``PING``, ``SETTINGS`` or empty ``DATA`` frames within a second without
  opening a call in between, is told ``GOAWAY ENHANCE_YOUR_CALM``;
* **idle** — a connection that has not sent the HTTP/2 preface within
  :attr:`Limits.preface_timeout` seconds is closed; a call whose message has
  had no byte for :attr:`Limits.body_timeout` seconds (``--body-timeout``;
  waiting for its grant does not count) is ended with ``DEADLINE_EXCEEDED``
  and ``RST_STREAM NO_ERROR``, and its grant goes back (:mod:`.bodytimer`).

Every violation closes that connection (``GOAWAY`` with the error code, then
the socket; after :data:`CLOSE_GRACE` seconds even if the client does not
read) or resets that stream; the server serves the others.
"""

from __future__ import annotations

from dataclasses import dataclass

#: HTTP/2 error codes (RFC 9113 §7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 7, 9, 11
#: the largest window HTTP/2 allows
MAX_WINDOW = (1 << 31) - 1
#: every stream's first window: HTTP/2's default, so it holds before the client has our SETTINGS
STREAM_WINDOW = 65535
#: the widest first window a connection is given, in default windows (:meth:`Limits.widened`)
WIDEST = 16
#: seconds a closed connection's unsent bytes wait for a client that does not read
CLOSE_GRACE = 5.0


@dataclass(frozen=True)
class Limits:
    """The bounds of one connection (see the module's text)."""

    max_streams: int = 128
    max_header_block: int = 32 * 1024
    max_header_list: int = 16 * 1024
    header_table: int = 4096
    write_high: int = 1 << 20
    resets: int = 200
    control: int = 1000
    preface_timeout: float = 10.0
    body_timeout: float = 60.0

    def budget(self, max_message: int) -> int:
        """Request bytes granted beyond the streams' first windows: two messages of the largest size."""
        return min(2 * (max_message + 5), MAX_WINDOW // 2)

    def connection_window(self, max_message: int) -> tuple[int, int]:
        """(the connection's window, the refund that triggers a ``WINDOW_UPDATE``).

        The window holds the budget, every stream's first window and the refunds not yet
        sent, so a stream that was granted its message can always send it.
        """
        base = self.budget(max_message) + self.max_streams * STREAM_WINDOW
        refund = max(STREAM_WINDOW, base // 8)
        return min(base + refund, MAX_WINDOW), refund

    def widened(self, size: int) -> tuple[int, int] | None:
        """(first window, streams at once) for a connection whose messages take ``size`` bytes of
        DATA; None when the default window holds them.

        The window is a power of two times the default one (at most :data:`WIDEST` times), and the
        streams are fewer by the same factor, so their first windows together take what the
        default ones take (:meth:`connection_window` holds them).
        """
        k = 1
        while k * STREAM_WINDOW < size and k < WIDEST:
            k *= 2
        if k == 1 or self.max_streams < k:
            return None
        return k * STREAM_WINDOW, self.max_streams // k


_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str) -> float | None:
    """Seconds of a ``grpc-timeout`` header (``"100m"``: 0.1), ``None`` when it is not one."""
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in _UNITS:
        return int(value[:-1]) * _UNITS[value[-1]]
    return None
