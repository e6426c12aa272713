"""Limits on what an HTTP request's head may hold, before any of it reaches the application.

uvicorn's httptools protocol puts no bound on headers: a client could send
10,000 headers, a header of 150 MB (which the parser gathers by concatenation,
stalling the event loop), or stream one header forever (RSS grew by 2.5 GB in
4 s). :class:`LimitedHttpToolsProtocol` is that protocol with two limits, as
nginx and Triton's HTTP server have them:

* at most :data:`MAX_HEADER_BYTES` bytes received before the head is complete
  (request line and headers together);
* at most :data:`MAX_HEADERS` header fields.

Past either, the connection is answered ``431 Request Header Fields Too Large``
with a JSON error and closed (a second later, dropping what still arrives, so the
client can read the answer); nothing is dispatched. ``serve`` passes it to
uvicorn as its ``http`` protocol.

It also writes a response's head together with its body (:class:`OneWrite`):
uvicorn writes them in two calls, so a server killed between the two segments
left a load balancer holding a head without its body, which it had already
passed on and could no longer retry elsewhere ("partial file" at the client).
"""

from __future__ import annotations

from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
LINGER_SECONDS = 1.0


class OneWrite:
    """A transport whose response heads wait for what follows them in the same turn of the loop.

    A write that is a response head (``HTTP/1.1 ...`` ending in a blank line) is held;
    the next write (the body, in the same turn of the loop) joins it, or the loop's
    next turn writes it alone (a response without a body). Everything else passes.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def is_closing(self) -> bool:  # asked on every response: not through __getattr__
        return bool(self._transport.is_closing())

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing heads beyond :data:`MAX_HEADER_BYTES` or :data:`MAX_HEADERS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._head_fields = 0
        self._in_body = False
        self._refused = False
        self._head_error = ""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(OneWrite(transport, self.loop))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)  # a chunk may complete the head and carry the start of the body
        if not self._in_body and not self._refused and self._head_bytes > MAX_HEADER_BYTES:
            self._refuse(f"the request's headers exceed {MAX_HEADER_BYTES} bytes")

    def send_400_response(self, msg: str) -> None:
        # the parser stops on our callbacks' refusal, and uvicorn answers it as a malformed request
        if self._head_error:
            self._refuse(self._head_error)
        else:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_fields = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        if self._head_fields > MAX_HEADERS:
            self._head_error = f"the request has more than {MAX_HEADERS} header fields"
            raise ValueError(self._head_error)  # stops the parser; answered in send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body, self._head_bytes = False, 0

    def _refuse(self, message: str) -> None:
        self._refused = True
        body = orjson.dumps({"error": message + ": send fewer or smaller headers"})
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
        )
        if not self.transport.is_closing():
            self.transport.write(head + body)
            # close a moment later, reading (and dropping) what still comes meanwhile: closing a
            # socket with unread data sends a reset, which can destroy the answer in flight
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
