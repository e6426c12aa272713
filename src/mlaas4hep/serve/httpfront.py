"""HTTP/1.1 inference served straight from the parser: no ASGI between the socket and the data plane.

Through uvicorn, a single-row ``POST .../infer`` costs about 250 µs of server
CPU, twice the gRPC wire front end's (:mod:`.grpcwire`): per request uvicorn
builds an ASGI scope, a ``RequestResponseCycle`` with its ``asyncio.Event``,
runs the app behind its proxy-headers middleware, passes the body and the
response through ``receive``/``send`` messages, and checks every response
header against two regular expressions. :class:`FrontProtocol` is uvicorn's
httptools protocol (with the head limits and one-write responses of
:mod:`.httpproto`) that serves the two routes carrying the load itself:

* ``POST /v2/models/{name}[/versions/{v}]/infer`` (JSON, or binary tensors with
  ``Inference-Header-Content-Length``, as perf_analyzer and tritonclient send);
* ``POST /json`` (TFaaS).

For those, the parser's callbacks gather the body (up to the server's body
limit: past it the rest is dropped and the answer is 413), one task runs the
same handler as the ASGI path (:meth:`.fastpath.FastPath.answer`: same errors,
same Prometheus series), and the status line, headers and body leave in one
``transport.write``. Everything else (other routes, other methods, a path
with a query string or percent-escapes, a WebSocket upgrade, a server with
``limit_concurrency`` or a ``root_path``) is handed to uvicorn's own code
and the ASGI app, unchanged.

On one connection the answers keep the order of the requests, whichever path
serves them: a hot request is a cycle of uvicorn's pipeline like any other
(:class:`HotCycle`). Keep-alive, ``Connection: close``, HTTP/1.0,
``Expect: 100-continue`` (answered when the handler reads the body, after its
checks, as uvicorn does), chunked and gzip/deflate request bodies behave as
through ASGI; a client gone before its body arrived counts as 499, a body
that stopped arriving for ``--body-timeout`` seconds is answered 408 and its
connection closed (:mod:`.httpproto`).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from . import errors
from .bodytimer import stalled_message
from .fastpath import FastPath
from .http import Call, Handler, check_length, decoded
from .httpproto import MAX_HEADERS, LimitedHttpToolsProtocol

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def find_front(app: Any) -> FastPath | None:
    """The :class:`FastPath` inside ``app`` and the wrappers around it (uvicorn's middleware, drain, gRPC)."""
    for _ in range(16):
        if isinstance(app, FastPath):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class HotCycle:
    """One hot request on a connection: its body as it arrives, and its place in the pipeline.

    It has what uvicorn's protocol reads of its own ``RequestResponseCycle``
    (``response_complete``, ``disconnected``, ``keep_alive``, ``message_event``),
    so the protocol's pipelining, shutdown and connection loss treat both alike.
    """

    __slots__ = (
        "complete",
        "disconnected",
        "expect_100",
        "handler",
        "headers",
        "held",
        "keep_alive",
        "limit",
        "params",
        "parts",
        "path",
        "response_complete",
        "route",
        "size",
        "timed_out",
        "version",
        "waiter",
    )

    def __init__(
        self,
        handler: Handler,
        route: str,
        params: dict[str, str],
        path: str,
        headers: dict[str, str],
        limit: int,
    ) -> None:
        self.handler, self.route, self.params, self.path, self.headers = handler, route, params, path, headers
        self.limit = limit  # bytes of body kept; past it the body is dropped and read_body says 413
        self.parts: list[bytes] = []
        self.size = 0
        self.held = 0  # bytes reserved in the server's intake, given back once answered
        self.complete = self.disconnected = self.response_complete = self.timed_out = False
        self.keep_alive = True
        self.expect_100 = False
        self.version = "1.1"
        self.waiter: asyncio.Future[Any] | None = None

    @property
    def message_event(self) -> HotCycle:  # uvicorn's connection_lost sets the cycle's event
        return self

    def set(self) -> None:
        """Wake the handler waiting for the body (it arrived, overflowed, stopped, or the client left)."""
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= self.limit:
            self.parts.append(chunk)
        else:  # over the limit: keep nothing, answer 413 at once
            self.parts = []
            self.set()


class HotCall(Call):
    """A :class:`Call` whose body comes from the parser's callbacks rather than ASGI messages."""

    __slots__ = ("_cycle", "_protocol")

    def __init__(self, cycle: HotCycle, protocol: FrontProtocol) -> None:
        super().__init__(cycle.params, cycle.headers, _no_receive)
        self._cycle, self._protocol = cycle, protocol

    async def read_body(self, limit: int) -> bytes | bytearray:
        """The whole body, with :meth:`Call.read_body`'s checks and messages (``limit``: at most the cycle's)."""
        cycle = self._cycle
        check_length(self.headers, limit)
        await self._reserve(min(limit, cycle.limit))
        if not cycle.complete and not cycle.disconnected and not cycle.timed_out and cycle.size <= limit:
            transport = self._protocol.transport
            if cycle.expect_100 and not transport.is_closing():
                cycle.expect_100 = False
                transport.write(CONTINUE)
            cycle.waiter = asyncio.get_running_loop().create_future()
            try:
                await cycle.waiter
            finally:
                cycle.waiter = None
        if cycle.disconnected:
            raise errors.ClientGone("the client went away")
        if cycle.timed_out:
            raise errors.BodyTimedOut(stalled_message(self._protocol.body_timeout))
        if cycle.size > min(limit, cycle.limit):
            raise errors.TooLarge(f"the request body exceeds the limit of {limit} bytes")
        parts = cycle.parts
        return decoded(parts[0] if len(parts) == 1 else b"".join(parts), self.headers, limit)

    async def _reserve(self, limit: int) -> None:
        """Reserve the body's declared length in the server's intake (:mod:`.intake`); while it does
        not fit, the connection stops reading. A body already read whole is counted at once."""
        cycle, front = self._cycle, self._protocol.front
        assert front is not None  # hot calls exist only with a front
        intake = front.plane.intake
        if cycle.disconnected or cycle.timed_out:
            return
        if cycle.complete:  # read whole already: counted, nothing to wait for
            cycle.held = cycle.size
            intake.force(cycle.size)
            return
        length = self.headers.get("content-length")
        n = intake.need(int(length) if length is not None and length.isdigit() else limit)
        if intake.take(n):
            cycle.held = n
            return
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        ticket = intake.queue(n, functools.partial(_granted, waiter))
        flow = self._protocol.flow
        flow.pause_reading()
        cycle.waiter = waiter  # the client leaving also wakes it
        try:
            await waiter
        finally:
            cycle.waiter = None
            if ticket.state == "granted":
                cycle.held = n
            else:
                intake.cancel(ticket)
            if not cycle.disconnected:
                flow.resume_reading()


def _granted(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():  # else the client left meanwhile: the bytes are given back all the same
        waiter.set_result(True)


async def _no_receive() -> Any:  # a HotCall's body is read by read_body alone
    raise RuntimeError("a hot request's body is read with read_body")


class FrontProtocol(LimitedHttpToolsProtocol):
    """uvicorn's httptools protocol serving the inference routes itself (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        front = find_front(self.app)
        self.front = front if self.limit_concurrency is None and not self.root_path else None
        if front is not None:  # the server's, for the bodies of both paths (see .httpproto)
            config = front.plane.config
            self.body_timeout, self.head_timeout = config.body_timeout, config.head_timeout
            self.metrics = front.plane.metrics

    # ------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        # the ASGI scope is only built for a request that goes to the app (in on_headers_complete)
        self._head_fields = 0
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # LimitedHttpToolsProtocol's and uvicorn's on_header in one call (it runs for every header)
        self._head_fields += 1
        if self._head_fields > MAX_HEADERS:
            self._head_error = f"the request has more than {MAX_HEADERS} header fields"
            raise ValueError(self._head_error)  # stops the parser; answered in send_400_response
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace (RFC 9110 5.5 excludes it)
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_body = True
        front, parser = self.front, self.parser
        if front is not None and parser.get_method() == b"POST":
            url = self.url
            if (
                url[:1] == b"/"
                and url.isascii()
                and b"?" not in url
                and b"%" not in url
                and not parser.should_upgrade()
            ):
                found = front.match(url.decode("latin-1"))
                if found is not None:
                    self._start_hot(front, *found)
                    return
        # for the app: the scope uvicorn's on_message_begin would have made, then uvicorn's dispatch
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)
        self.url, self.expect_100_continue = url, expect
        self.headers.extend(headers)
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle  # uvicorn's RequestResponseCycle, or a HotCycle
        if type(cycle) is HotCycle:
            if not cycle.response_complete:
                cycle.add(body)
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        cycle: Any = self.cycle
        if type(cycle) is HotCycle:
            self._in_body, self._head_bytes = False, 0
            cycle.complete = True
            cycle.set()
            return
        super().on_message_complete()

    def _client_waits(self) -> bool:
        cycle: Any = self.cycle
        return bool(cycle.expect_100) if type(cycle) is HotCycle else super()._client_waits()

    def _answer_timeout(self, cycle: Any) -> bool:
        if type(cycle) is not HotCycle:
            return super()._answer_timeout(cycle)
        if cycle.response_complete:  # answered already; the rest of its body was being dropped
            return False
        cycle.timed_out, cycle.keep_alive = True, False
        cycle.set()  # read_body raises BodyTimedOut: answered 408 as any error
        return True

    # ------------------------------------------------------------ hot requests
    def _start_hot(self, front: FastPath, handler: Handler, route: str, params: dict[str, str]) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}
        cycle = HotCycle(
            handler, route, params, self.url.decode("latin-1"), headers, front.plane.config.max_body
        )
        version = self.parser.get_http_version()
        cycle.version = version
        cycle.keep_alive = version != "1.0" and self.parser.should_keep_alive()
        cycle.expect_100 = self.expect_100_continue
        previous, self.cycle = self.cycle, cycle  # type: ignore[assignment]
        if previous is None or previous.response_complete:
            self._run(cycle)
        else:  # pipelined behind a request still being answered
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))  # type: ignore[arg-type]

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # uvicorn starts the next cycle of its pipeline here once the previous one is answered
        if type(cycle) is HotCycle:
            self._run(cycle)
        else:
            super()._start_asgi_task(cycle, app)

    def _run(self, cycle: HotCycle) -> None:
        task = self.loop.create_task(self._serve(cycle))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _serve(self, cycle: HotCycle) -> None:
        front = self.front
        assert front is not None
        try:
            reply = await front.answer(cycle.handler, cycle.route, cycle.path, HotCall(cycle, self))
        finally:
            if cycle.held:  # the body's bytes are done with: the intake's next reservations may go
                front.plane.intake.give(cycle.held)
                cycle.held = 0
        cycle.response_complete = True
        if reply is None:  # the client went away: nobody to answer
            return
        body = reply.body
        head = [
            STATUS_LINE[reply.status],
            *[b"%s: %s\r\n" % kv for kv in self.server_state.default_headers],
            b"content-type: %s\r\ncontent-length: %d\r\n" % (reply.content_type.encode(), len(body)),
            *[b"%s: %s\r\n" % (k.lower().encode(), v.encode()) for k, v in reply.headers.items()],
            b"\r\n" if cycle.keep_alive else b"connection: close\r\n\r\n",
        ]
        transport = self.transport
        if self.flow.write_paused and not transport.is_closing():
            await self.flow.drain()
        if self.access_log:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else ""
            self.access_logger.info(
                '%s - "POST %s HTTP/%s" %d', client, cycle.path, cycle.version, reply.status
            )
        if not transport.is_closing():
            head.append(body)
            transport.write(b"".join(head))  # one write: head and body together (see .httpproto)
            if not cycle.keep_alive:
                transport.close()
        front.plane.metrics.http_request(cycle.route, "POST", reply.status)
        self.on_response_complete()
