"""gRPC over HTTP/2 as bytes, for the wire front end (:mod:`.grpcwire`): frames, header blocks, RPCs.

The replies' header blocks are constant bytes: literals without indexing, so
whatever the client's HPACK decoder table holds they mean the same, and no
encoder state is kept. :class:`Context` is what the servicer uses of
``grpc.aio.ServicerContext``; :class:`Methods` maps a ``:path`` to the
servicer's coroutine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import grpc

from ._proto import grpc_service_pb2 as pb

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

SERVICE = "/inference.GRPCInferenceService/"


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
