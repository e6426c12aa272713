"""gRPC over HTTP/2 as bytes, for the wire front end (:mod:`.grpcwire`): frames and header blocks.

The replies' header blocks are constant bytes: literals without indexing, so
whatever the client's HPACK decoder table holds they mean the same, and no
encoder state is kept.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
#: frames larger than this are a protocol error (we announce it in our SETTINGS)
MAX_FRAME = 1 << 20

HEAD = struct.Struct(">I")
#: ``:status: 200`` (static table index 8), ``content-type: application/grpc`` as a literal
#: without indexing (name: static index 31): constant bytes, whatever the client's table holds
REPLY_HEADERS = b"\x88\x0f\x10\x10application/grpc"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags)) + HEAD.pack(stream) + payload


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
