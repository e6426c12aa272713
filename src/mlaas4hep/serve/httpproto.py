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

Nor does uvicorn bound the time a request's *head* may take (its keep-alive
timeout only starts after an answer): a client could open connections and send
nothing, or a header line now and then (slowloris), holding a file descriptor
each for ever. A head that is not whole ``head_timeout`` seconds after the
connection opened or after its first byte (``--head-timeout``, nginx's
``client_header_timeout``) is answered ``408`` and the connection closed. It
costs one timer per connection, and one per request only when a head spans reads.

uvicorn puts no bound on the time a request's body may take either (its
``timeout_keep_alive`` only covers the wait between requests): a client could
announce a body and never send it. A body that has had no byte for
``body_timeout`` seconds (``--body-timeout``, :mod:`.bodytimer`) while the
connection was read is cut off: nothing more is read, the application's
``receive`` raises :class:`~.errors.BodyTimedOut`, so the request is answered
``408`` with the server's usual JSON error, and the connection is closed. A
request whose answer has begun already just has its connection closed.

It also writes a response's head together with its body (:class:`OneWrite`):
uvicorn writes them in two calls, so a server killed between the two segments
left a load balancer holding a head without its body, which it had already
passed on and could no longer retry elsewhere ("partial file" at the client).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .bodytimer import TICKS, Ticker, stalled_message
from .errors import BodyTimedOut

if TYPE_CHECKING:
    from .metrics import Metrics

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
LINGER_SECONDS = 1.0
#: seconds a body may go without a byte, unless the server's configuration says otherwise
BODY_TIMEOUT = 60.0
#: seconds a request's head may take to arrive, unless the server's configuration says otherwise
HEAD_TIMEOUT = 60.0


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
    """uvicorn's httptools protocol, refusing heads beyond :data:`MAX_HEADER_BYTES` or :data:`MAX_HEADERS`,
    and bodies that stop arriving for ``body_timeout`` seconds (see the module's text).

    ``body_timeout`` and ``metrics`` (which counts the bodies cut off) are the server's,
    when a subclass finds them (:class:`~.httpfront.FrontProtocol` does).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._head_fields = 0
        self._in_body = False
        self._refused = False
        self._head_error = ""
        self.body_timeout, self.head_timeout = BODY_TIMEOUT, HEAD_TIMEOUT
        self.metrics: Metrics | None = None
        self._head_timer: asyncio.TimerHandle | None = None  # while a head is awaited
        self._body_ticker: Ticker | None = None  # made with the first body that spans reads
        self._body_idle = 0  # checks since a byte arrived
        self._timed_out: Any = None  # the cycle whose body was cut off

    def connection_made(self, transport: Any) -> None:
        super().connection_made(OneWrite(transport, self.loop))  # type: ignore[arg-type]
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._body_ticker is not None:
            self._body_ticker.stop()
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_idle = 0
        if not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)  # a chunk may complete the head and carry the start of the body
        timer = self._head_timer
        if timer is not None and (self._in_body or not self._head_bytes):  # the head is whole
            timer.cancel()
            self._head_timer = timer = None
        if self._in_body:  # a body still to come: watch it (most requests arrive in one read)
            if self._body_ticker is None:
                self._body_ticker = Ticker(self.loop, self.body_timeout, self._check_body)
            self._body_ticker.start()
        elif not self._refused:
            if self._head_bytes > MAX_HEADER_BYTES:
                self._refuse(f"the request's headers exceed {MAX_HEADER_BYTES} bytes")
            elif self._head_bytes and timer is None:  # a head begun in this read, not whole yet
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_expired)

    def _head_expired(self) -> None:
        """The head did not arrive whole in ``head_timeout`` seconds: 408, then the connection closes."""
        self._head_timer = None
        if self._refused or self._in_body or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its next head is not awaited yet (keep-alive's turn)
        if self.metrics is not None:
            self.metrics.body_timeout("head")
        self._answer_and_close(
            b"408 Request Timeout",
            f"the request's head did not arrive whole in {self.head_timeout:g} s (the server's --head-timeout)",
        )

    # ------------------------------------------------------------ bodies that stop arriving
    def _check_body(self) -> bool:
        """One check of the body being read (see :mod:`.bodytimer`); True: check again later."""
        if not self._in_body or self._refused or self.transport.is_closing():
            return False
        if self.flow.read_paused or self._client_waits():
            self._body_idle = 0  # held back by the server (the intake, a pipelined request): not the client
            return True
        self._body_idle += 1
        if self._body_idle <= TICKS:
            return True
        self._refused = True  # nothing more is read: the connection closes once answered
        if self.metrics is not None:
            self.metrics.body_timeout("http")
        if not self._answer_timeout(self.cycle):
            self.transport.close()
        return False

    def handle_websocket_upgrade(self) -> None:
        self._in_body = False  # the connection is the WebSocket protocol's now
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().handle_websocket_upgrade()

    def _client_waits(self) -> bool:
        """Whether the client waits for its ``100 Continue`` (which the application has not asked for yet)."""
        return bool(getattr(self.cycle, "waiting_for_100_continue", False))

    def _answer_timeout(self, cycle: Any) -> bool:
        """Make the application answer 408 (its ``receive`` raises); False when its answer has begun."""
        if cycle is None or cycle.response_started:
            return False
        self._timed_out = cycle
        cycle.keep_alive = False
        cycle.message_event.set()  # wakes a receive() in progress
        return True

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # the application's receive raises BodyTimedOut once the body of its cycle is cut off
        async def guarded(scope: Any, receive: Any, send: Any) -> None:
            async def guarded_receive() -> Any:
                message = await receive()
                if self._timed_out is cycle:
                    raise BodyTimedOut(stalled_message(self.body_timeout))
                return message

            await app(scope, guarded_receive, send)

        super()._start_asgi_task(cycle, guarded)

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
        self._answer_and_close(
            b"431 Request Header Fields Too Large", message + ": send fewer or smaller headers"
        )

    def _answer_and_close(self, status: bytes, message: str) -> None:
        """Answer ``status`` with a JSON error, read nothing more, and close the connection."""
        self._refused = True
        body = orjson.dumps({"error": message})
        head = (
            b"HTTP/1.1 " + status + b"\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
        )
        if not self.transport.is_closing():
            self.transport.write(head + body)
            # close a moment later, reading (and dropping) what still comes meanwhile: closing a
            # socket with unread data sends a reset, which can destroy the answer in flight
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
